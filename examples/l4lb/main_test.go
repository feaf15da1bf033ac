package main

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane/internal/testutils/maglevgolden"
)

func loadGolden(t *testing.T) []maglevgolden.Case {
	return maglevgolden.Load(t, "../../lb/maglev/testdata/cilium_tables.json.gz")
}

// runCmd runs the command in-process and returns its exit status, stdout
// and stderr.
func runCmd(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// parseOutput checks the output format (one line, IDs separated by
// commas, no spaces) and returns the IDs.
func parseOutput(t *testing.T, out string) []uint32 {
	t.Helper()
	line, ok := strings.CutSuffix(out, "\n")
	if !ok || strings.ContainsAny(line, "\n \t") {
		t.Fatalf("output is not exactly one line of IDs: %.80q…", out)
	}
	fields := strings.Split(line, ",")
	ids := make([]uint32, len(fields))
	for i, f := range fields {
		n, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			t.Fatalf("slot %d: %q is not an ID", i, f)
		}
		ids[i] = uint32(n)
	}
	return ids
}

// TestMaglevTableCiliumGolden runs the command on every input of the
// golden file (all table sizes, three seeds, 1 to 1000 backends, IPv4,
// IPv6 and IPv4-mapped addresses, TCP/UDP/SCTP/ANY, weights including 0
// and 65535, duplicate backends) and compares its output with the table
// Cilium computed. The command numbers backends 1..N; the golden tables
// hold the IDs the generator gave Cilium, so the output is translated
// through position i → the i-th backend's ID before comparing (Cilium
// orders backends by key only, so the IDs do not change the table's shape).
func TestMaglevTableCiliumGolden(t *testing.T) {
	for _, gc := range loadGolden(t) {
		t.Run(gc.Name, func(t *testing.T) {
			args := []string{"maglev-table", "-seed", gc.HashSeed, "-m", strconv.FormatUint(uint64(gc.TableSize), 10)}
			for _, b := range gc.Backends {
				args = append(args, fmt.Sprintf("%s/%s@%d", b.Addr, b.Proto, b.Weight))
			}
			code, stdout, stderr := runCmd(args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if stderr != "" {
				t.Errorf("stderr: %q", stderr)
			}
			table := parseOutput(t, stdout)
			if uint(len(table)) != gc.TableSize {
				t.Fatalf("%d slots, want %d", len(table), gc.TableSize)
			}
			for i, pos := range table {
				if pos < 1 || int(pos) > len(gc.Backends) {
					t.Fatalf("slot %d: ID %d is not one of 1..%d", i, pos, len(gc.Backends))
				}
				table[i] = gc.Backends[pos-1].ID
			}
			for i := range gc.Table {
				if table[i] != gc.Table[i] {
					t.Fatalf("slot %d: backend ID %d, Cilium has %d", i, table[i], gc.Table[i])
				}
			}
			if got := maglevgolden.Digest(table); got != gc.SHA256 {
				t.Fatalf("table digest %s, Cilium's %s", got, gc.SHA256)
			}
		})
	}
}

// TestMaglevTableSpelling: the same backends written differently give the
// same table, and the defaults are Cilium's (seed JLfvgnHc2kaSUFaI, M=16381,
// weight 100).
func TestMaglevTableSpelling(t *testing.T) {
	same := [][]string{
		{"maglev-table", "-seed", "JLfvgnHc2kaSUFaI", "-m", "16381", "10.0.0.1:80/TCP@100", "[fd00::1]:80/UDP@100", "10.0.0.3:53/ANY@100"},
		{"maglev-table", "10.0.0.1:80/TCP", "[fd00::1]:80/UDP", "10.0.0.3:53/ANY"},
		{"maglev-table", "-m=16381", "--seed=JLfvgnHc2kaSUFaI", "10.0.0.1:80/tcp", "[fd00:0::0001]:80/udp", "10.0.0.3:53/any"},
		{"maglev-table", "10.0.0.1:80/Tcp@100", "[FD00::1]:80/Udp", "10.0.0.3:53/Any@100"},
	}
	var want string
	for i, args := range same {
		code, stdout, stderr := runCmd(args...)
		if code != 0 || stderr != "" {
			t.Fatalf("%q: exit %d, stderr %q", args, code, stderr)
		}
		if got := parseOutput(t, stdout); len(got) != 16381 {
			t.Fatalf("%q: %d slots", args, len(got))
		}
		if i == 0 {
			want = stdout
		} else if stdout != want {
			t.Errorf("%q gives a different table than %q", args, same[0])
		}
	}

	// The protocol, the address family, the port and the weight are part
	// of what is hashed: changing one of them changes the table.
	differ := [][]string{
		{"maglev-table", "10.0.0.1:80/UDP", "[fd00::1]:80/UDP", "10.0.0.3:53/ANY"},
		{"maglev-table", "10.0.0.1:80/TCP", "[::ffff:10.0.0.2]:80/UDP", "10.0.0.3:53/ANY"},
		{"maglev-table", "10.0.0.1:81/TCP", "[fd00::1]:80/UDP", "10.0.0.3:53/ANY"},
		{"maglev-table", "10.0.0.1:80/TCP@300", "[fd00::1]:80/UDP", "10.0.0.3:53/ANY"},
		{"maglev-table", "10.0.0.1:80/TCP", "[fd00::1]:80/UDP", "10.0.0.3:53/SCTP"},
		{"maglev-table", "-seed", "AAAAAAAAAAAAAAAA", "10.0.0.1:80/TCP", "[fd00::1]:80/UDP", "10.0.0.3:53/ANY"},
	}
	for _, args := range differ {
		code, stdout, stderr := runCmd(args...)
		if code != 0 || stderr != "" {
			t.Fatalf("%q: exit %d, stderr %q", args, code, stderr)
		}
		if stdout == want {
			t.Errorf("%q gives the same table as %q", args, same[0])
		}
	}
}

// TestMaglevTableWeights: a backend's share follows its weight (the
// Maglev paper: within a few entries of weight/sum·M), and weight 0 in a
// weighted pool gets exactly one entry, as in Cilium.
func TestMaglevTableWeights(t *testing.T) {
	code, stdout, stderr := runCmd("maglev-table", "-m", "65521",
		"10.0.0.1:80/TCP@1", "10.0.0.2:80/TCP@3", "10.0.0.3:80/TCP@6", "10.0.0.4:80/TCP@0")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	count := map[uint32]int{}
	for _, id := range parseOutput(t, stdout) {
		count[id]++
	}
	const m = 65521
	for id, w := range map[uint32]float64{1: 1, 2: 3, 3: 6} {
		want := w / 10 * m
		if got := float64(count[id]); got < want*0.99 || got > want*1.01 {
			t.Errorf("backend %d of weight %v: %v entries, want %.0f ± 1%%", id, w, got, want)
		}
	}
	if count[4] != 1 {
		t.Errorf("backend of weight 0: %d entries, want 1", count[4])
	}
}

// TestMaglevTableBadInput: every kind of bad input exits 2 with a message
// on stderr that names the problem, and prints nothing on stdout.
func TestMaglevTableBadInput(t *testing.T) {
	ok := "10.0.0.1:80/TCP"
	for _, tc := range []struct {
		name string
		args []string
		msg  string // a substring of the message
	}{
		{"no command", nil, "usage"},
		{"unknown command", []string{"maglev"}, "unknown command"},
		{"no backends", []string{"maglev-table"}, "no backends"},
		{"no backends with flags", []string{"maglev-table", "-m", "251", "-seed", "JLfvgnHc2kaSUFaI"}, "no backends"},
		{"unknown flag", []string{"maglev-table", "-n", "251", ok}, "flag provided but not defined"},
		{"m missing value", []string{"maglev-table", "-m"}, "needs an argument"},
		{"m not prime", []string{"maglev-table", "-m", "250", ok}, "not a supported table size"},
		{"m prime unsupported", []string{"maglev-table", "-m", "257", ok}, "not a supported table size"},
		{"m zero", []string{"maglev-table", "-m", "0", ok}, "not a supported table size"},
		{"m empty", []string{"maglev-table", "-m", "", ok}, "not a supported table size"},
		{"m negative", []string{"maglev-table", "-m", "-251", ok}, "not a supported table size"},
		{"m hex", []string{"maglev-table", "-m", "0xfb", ok}, "not a supported table size"},
		{"m leading zero", []string{"maglev-table", "-m", "0251", ok}, "not a supported table size"},
		{"m too large", []string{"maglev-table", "-m", "262139", ok}, "not a supported table size"},
		{"m huge", []string{"maglev-table", "-m", "99999999999999999999999", ok}, "not a supported table size"},
		{"m word", []string{"maglev-table", "-m", "big", ok}, "not a supported table size"},
		{"seed empty", []string{"maglev-table", "-seed", "", ok}, "decodes to 0 bytes"},
		{"seed short", []string{"maglev-table", "-seed", "AAAAAAAAAAAA", ok}, "decodes to 9 bytes"},
		{"seed long", []string{"maglev-table", "-seed", "AAAAAAAAAAAAAAAAAAAA", ok}, "decodes to 15 bytes"},
		{"seed padded 11 bytes", []string{"maglev-table", "-seed", "AAAAAAAAAAAAAAA=", ok}, "decodes to 11 bytes"},
		{"seed url alphabet", []string{"maglev-table", "-seed", "JLfvgnHc2kaSUF-_", ok}, "not standard base64"},
		{"seed not base64", []string{"maglev-table", "-seed", "not a seed at all", ok}, "not standard base64"},
		{"seed newline", []string{"maglev-table", "-seed", "JLfvgnHc\n2kaSUFaI", ok}, "line break"},
		{"seed unpadded", []string{"maglev-table", "-seed", "JLfvgnHc2kaSUFa", ok}, "not standard base64"},
		{"backend empty", []string{"maglev-table", ""}, "protocol is missing"},
		{"backend no protocol", []string{"maglev-table", "10.0.0.1:80"}, "protocol is missing"},
		{"backend empty protocol", []string{"maglev-table", "10.0.0.1:80/"}, "protocol"},
		{"backend bad protocol", []string{"maglev-table", "10.0.0.1:80/ICMP"}, "want TCP, UDP, SCTP or ANY"},
		{"backend numeric protocol", []string{"maglev-table", "10.0.0.1:80/6"}, "want TCP, UDP, SCTP or ANY"},
		{"backend no port", []string{"maglev-table", "10.0.0.1/TCP"}, "want ADDR:PORT"},
		{"backend empty port", []string{"maglev-table", "10.0.0.1:/TCP"}, "port"},
		{"backend port zero", []string{"maglev-table", "10.0.0.1:0/TCP"}, "out of range"},
		{"backend port too large", []string{"maglev-table", "10.0.0.1:65536/TCP"}, "out of range"},
		{"backend port sign", []string{"maglev-table", "10.0.0.1:+80/TCP"}, "not a decimal number"},
		{"backend port leading zero", []string{"maglev-table", "10.0.0.1:080/TCP"}, "leading zero"},
		{"backend port name", []string{"maglev-table", "10.0.0.1:http/TCP"}, "not a decimal number"},
		{"backend no address", []string{"maglev-table", ":80/TCP"}, "want ADDR:PORT"},
		{"backend bad ipv4", []string{"maglev-table", "10.0.0.256:80/TCP"}, "address"},
		{"backend ipv4 leading zero", []string{"maglev-table", "10.0.0.01:80/TCP"}, "address"},
		{"backend hostname", []string{"maglev-table", "example.com:80/TCP"}, "address"},
		{"backend ipv6 without brackets", []string{"maglev-table", "fd00::1:80/TCP"}, "must be in brackets"},
		{"backend ipv4 in brackets", []string{"maglev-table", "[10.0.0.1]:80/TCP"}, "brackets are for IPv6"},
		{"backend unbalanced bracket", []string{"maglev-table", "[fd00::1:80/TCP"}, "address"},
		{"backend ipv6 zone", []string{"maglev-table", "[fe80::1%eth0]:80/TCP"}, "zone"},
		{"backend empty weight", []string{"maglev-table", "10.0.0.1:80/TCP@"}, "weight"},
		{"backend weight too large", []string{"maglev-table", "10.0.0.1:80/TCP@65536"}, "out of range"},
		{"backend weight negative", []string{"maglev-table", "10.0.0.1:80/TCP@-1"}, "not a decimal number"},
		{"backend weight fraction", []string{"maglev-table", "10.0.0.1:80/TCP@1.5"}, "not a decimal number"},
		{"backend two weights", []string{"maglev-table", "10.0.0.1:80/TCP@1@2"}, "weight"},
		{"backend trailing garbage", []string{"maglev-table", "10.0.0.1:80/TCP/x"}, "protocol"},
		{"second backend bad", []string{"maglev-table", ok, "10.0.0.2:80/TCP@x"}, "backend 2"},
		{"flag after backends", []string{"maglev-table", ok, "-m", "251"}, "backend 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(tc.args...)
			if code != exitBadInput {
				t.Errorf("exit %d, want %d", code, exitBadInput)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			if !strings.Contains(stderr, tc.msg) {
				t.Errorf("stderr %q does not say %q", stderr, tc.msg)
			}
		})
	}
}

// TestMaglevTableHelp: -h prints the usage on stderr, nothing on stdout.
func TestMaglevTableHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"maglev-table", "-h"}} {
		code, stdout, stderr := runCmd(args...)
		if code != 0 || stdout != "" || !strings.Contains(stderr, "usage") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
}

// TestParseBackend checks the parsed values against the arguments.
func TestParseBackend(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want backendArg
	}{
		{"10.0.0.1:8080/TCP", backendArg{netip.MustParseAddrPort("10.0.0.1:8080"), 6, 100}},
		{"10.0.0.1:1/udp@0", backendArg{netip.MustParseAddrPort("10.0.0.1:1"), 17, 0}},
		{"[fd00::1]:65535/SCTP@65535", backendArg{netip.MustParseAddrPort("[fd00::1]:65535"), 132, 65535}},
		{"[::ffff:10.0.0.1]:53/ANY@7", backendArg{netip.MustParseAddrPort("[::ffff:10.0.0.1]:53"), 0, 7}},
	} {
		got, err := parseBackend(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseBackend(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}
