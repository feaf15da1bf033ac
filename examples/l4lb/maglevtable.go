package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/lb"
	"github.com/nodeplane/nodeplane/lb/maglev"
)

// backendArg is one parsed BACKEND argument of maglev-table.
type backendArg struct {
	Addr   netip.AddrPort
	Proto  nodeplane.Protocol
	Weight uint16
}

// String formats b the way parseBackend reads it, with the address in
// canonical form and the protocol in Cilium's spelling.
func (b backendArg) String() string {
	name := strings.ToUpper(b.Proto.String())
	if b.Proto == nodeplane.ProtoAny {
		name = "ANY"
	}
	return fmt.Sprintf("%s/%s@%d", b.Addr, name, b.Weight)
}

// backendProtocols are the protocols a backend may name: those Cilium's
// backend keys can spell.
var backendProtocols = map[string]nodeplane.Protocol{
	"TCP":  nodeplane.ProtoTCP,
	"UDP":  nodeplane.ProtoUDP,
	"SCTP": nodeplane.ProtoSCTP,
	"ANY":  nodeplane.ProtoAny,
}

// parseBackend parses ADDR:PORT/PROTO[@WEIGHT]. It is strict so that one
// backend has one spelling: IPv6 in brackets, no zone, port 1–65535 and
// weight 0–65535 in decimal without sign or leading zeros.
func parseBackend(s string) (backendArg, error) {
	var b backendArg
	addrPort, rest, ok := strings.Cut(s, "/")
	if !ok {
		return b, errors.New("want ADDR:PORT/PROTO[@WEIGHT], the protocol is missing")
	}
	host, port, ok := cutLast(addrPort, ":")
	if !ok || host == "" {
		return b, fmt.Errorf("address %q: want ADDR:PORT", addrPort)
	}
	var addr netip.Addr
	if inner, ok := strings.CutPrefix(host, "["); ok {
		inner, ok = strings.CutSuffix(inner, "]")
		if !ok {
			return b, fmt.Errorf("address %q: unbalanced brackets", host)
		}
		a, err := netip.ParseAddr(inner)
		if err != nil {
			return b, fmt.Errorf("address %q: %v", host, err)
		}
		if !a.Is6() {
			return b, fmt.Errorf("address %q: brackets are for IPv6 addresses only", host)
		}
		addr = a
	} else {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return b, fmt.Errorf("address %q: %v", host, err)
		}
		if a.Is6() {
			return b, fmt.Errorf("address %q: an IPv6 address must be in brackets, [%s]:PORT", host, host)
		}
		addr = a
	}
	if addr.Zone() != "" {
		return b, fmt.Errorf("address %q: a backend address cannot have a zone", host)
	}
	p, err := parseDecimal(port, 1, 65535)
	if err != nil {
		return b, fmt.Errorf("port %q: %v", port, err)
	}
	b.Addr = netip.AddrPortFrom(addr, uint16(p))

	protoName, weight, hasWeight := strings.Cut(rest, "@")
	proto, ok := backendProtocols[strings.ToUpper(protoName)]
	if !ok {
		return b, fmt.Errorf("protocol %q: want TCP, UDP, SCTP or ANY", protoName)
	}
	b.Proto = proto

	b.Weight = lb.DefaultWeight
	if hasWeight {
		w, err := parseDecimal(weight, 0, 65535)
		if err != nil {
			return b, fmt.Errorf("weight %q: %v", weight, err)
		}
		b.Weight = uint16(w)
	}
	return b, nil
}

// cutLast is strings.Cut at the last occurrence of sep.
func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}

// parseDecimal parses a number in [lo, hi] written in plain decimal: digits
// only, no leading zeros.
func parseDecimal(s string, lo, hi uint64) (uint64, error) {
	if s == "" {
		return 0, errors.New("empty")
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, errors.New("not a decimal number")
		}
	}
	if len(s) > 1 && s[0] == '0' {
		return 0, errors.New("leading zero")
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("out of range %d–%d", lo, hi)
	}
	return n, nil
}

// parseSeed checks that s is 12 bytes of standard base64: 16 characters of
// the standard alphabet. Go's decoder skips newlines; a seed may not
// contain them.
func parseSeed(s string) error {
	if strings.ContainsAny(s, "\r\n") {
		return fmt.Errorf("-seed %q: contains a line break", s)
	}
	if _, err := maglev.ParseHashSeed(s); err != nil {
		return fmt.Errorf("-seed: %w", err)
	}
	return nil
}

// parseTableSize parses -m, which must be one of the supported primes.
func parseTableSize(s string) (uint, error) {
	sizes := maglev.SupportedTableSizes()
	n, err := parseDecimal(s, 1, uint64(sizes[len(sizes)-1]))
	if err != nil || !slices.Contains(sizes, uint(n)) {
		return 0, fmt.Errorf("-m %q: not a supported table size (one of %v)", s, sizes)
	}
	return uint(n), nil
}

func runMaglevTable(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("l4lb maglev-table", flag.ContinueOnError)
	fs.SetOutput(stderr)
	seed := fs.String("seed", maglev.DefaultHashSeed, "the cluster's Maglev hash `seed`: 12 bytes, standard base64 (Cilium's --bpf-lb-maglev-hash-seed)")
	size := fs.String("m", strconv.Itoa(maglev.DefaultTableSize), fmt.Sprintf("table size `M`, one of %v (Cilium's --bpf-lb-maglev-table-size)", maglev.SupportedTableSizes()))
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: l4lb maglev-table [-seed BASE64] [-m M] ADDR:PORT/PROTO[@WEIGHT]...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitBadInput
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "l4lb maglev-table: "+format+"\n", a...)
		return exitBadInput
	}

	m, err := parseTableSize(*size)
	if err != nil {
		return bad("%v", err)
	}
	if err := parseSeed(*seed); err != nil {
		return bad("%v", err)
	}
	if fs.NArg() == 0 {
		return bad("no backends: want at least one ADDR:PORT/PROTO[@WEIGHT]")
	}
	backends := make([]maglev.Backend, fs.NArg())
	for i, arg := range fs.Args() {
		be, err := parseBackend(arg)
		if err != nil {
			return bad("backend %d %q: %v", i+1, arg, err)
		}
		key, err := maglev.BackendKey(be.Addr, be.Proto)
		if err != nil {
			return bad("backend %d %q: %v", i+1, arg, err)
		}
		backends[i] = maglev.Backend{Key: key, ID: uint32(i + 1), Weight: be.Weight}
	}

	builder, err := maglev.New(maglev.Config{TableSize: m, HashSeed: *seed})
	if err != nil {
		return bad("%v", err)
	}
	table, err := builder.Table(backends)
	if err != nil {
		return bad("%v", err)
	}
	out := make([]byte, 0, len(table)*4)
	for i, id := range table {
		if i > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendUint(out, uint64(id), 10)
	}
	out = append(out, '\n')
	if _, err := stdout.Write(out); err != nil {
		fmt.Fprintf(stderr, "l4lb maglev-table: %v\n", err)
		return 1
	}
	return exitOK
}
