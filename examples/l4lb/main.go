// Command l4lb is a standalone L4 load balancer built on lb.NorthSouth,
// and an operator's tool for Maglev tables.
//
//	l4lb run -config FILE [-check]
//
// attaches lb.NorthSouth to the interface the YAML file names and
// balances its services (frontends ADDR:PORT/PROTO, backends with weights
// and states, Maglev or random, Maglev table size and seed; the format is
// documented on fileConfig in config.go). SIGHUP re-reads the file and
// applies only what changed: unchanged services are not touched, and a
// changed service keeps the flows of the backends that stay. The
// interface, the mode and the Maglev settings need a restart. Mode dnat
// (the default) keeps the client address, so backends must route replies
// through this node; mode snat rewrites the source to snatAddresses and a
// NAT port (attach-side limits: l4lb attaches only to the one interface,
// so backends' replies must arrive on it; IPv4 needs
// net.ipv4.conf.IFACE.accept_local=1). Mode dsr keeps the client address
// and sends the frontend along in Cilium's IPv4 option / IPv6 destination
// option; the backends' nodes run
//
//	l4lb dsr-backend IFACE...
//
// which decodes it on those interfaces and sends the replies from the
// frontend straight to the clients. -check validates the file and exits.
//
// The other subcommand needs no kernel:
//
//	l4lb maglev-table [-seed BASE64] [-m M] BACKEND...
//
// prints the Maglev lookup table of a service with the given backends, the
// same table Cilium (v1.20.2's pkg/maglev, GetLookupTable) computes for the
// same backends, table size (--bpf-lb-maglev-table-size) and seed
// (--bpf-lb-maglev-hash-seed). Use it to check what every node will build,
// or to compare a nodeplane node with a Cilium node.
//
// Each BACKEND is ADDR:PORT/PROTO[@WEIGHT]: an IPv4 address, or an IPv6
// address in brackets ([fd00::1]:53/UDP); a port 1–65535 in decimal; the
// protocol TCP, UDP, SCTP or ANY (any case; the key Cilium hashes spells it
// in capitals); and an optional weight 0–65535, by default 100 (Cilium's
// default backend weight, [lb.DefaultWeight]). Backends get the IDs 1..N in
// the order of the arguments. The output is exactly one line: the table's
// backend IDs, slot 0 first, separated by commas without spaces.
//
// -m is the table size, one of the primes of
// [maglev.SupportedTableSizes] (default 16381, Cilium's); -seed is the
// cluster's hash seed, 12 bytes in standard base64 (default Cilium's,
// JLfvgnHc2kaSUFaI).
//
// Exit status: 0 with the table on stdout; 2 for bad input (an unsupported
// table size, a seed that is not 12 bytes of standard base64, a malformed
// backend, no backends) with a message on stderr and nothing on stdout; 1
// if the table cannot be written.
package main

import (
	"fmt"
	"io"
	"os"
)

// Exit codes.
const (
	exitOK       = 0
	exitBadInput = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: l4lb COMMAND [ARGS]

commands:
  maglev-table [-seed BASE64] [-m M] BACKEND...
        print the Maglev table of BACKENDs (ADDR:PORT/PROTO[@WEIGHT]) as Cilium computes it
  run -config FILE [-check]
        balance the file's services on its interface (XDP + tc); SIGHUP re-reads the file
  dsr-backend IFACE...
        on a backend's node: answer DSR flows arriving on IFACEs from their frontend
`

// run is the whole command: args without the program name, output to
// stdout and stderr, the exit status as its result.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitBadInput
	}
	switch args[0] {
	case "maglev-table":
		return runMaglevTable(args[1:], stdout, stderr)
	case "run":
		return runLB(args[1:], stdout, stderr)
	case "dsr-backend":
		return runDSRBackend(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stderr, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "l4lb: unknown command %q\n%s", args[0], usage)
	return exitBadInput
}
