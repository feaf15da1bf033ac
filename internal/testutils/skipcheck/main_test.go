package main

import (
	"io"
	"strings"
	"testing"
)

// A go test -json log with a parallel test whose skip message is printed
// after another test's output, a package without tests, and one skip of
// each kind.
const log = `{"Action":"start","Package":"p/nofiles"}
{"Action":"skip","Package":"p/nofiles"}
{"Action":"run","Package":"p","Test":"TestAllowed"}
{"Action":"output","Package":"p","Test":"TestAllowed","Output":"=== RUN   TestAllowed\n"}
{"Action":"output","Package":"p","Test":"TestAllowed","Output":"    a_test.go:3: kernel feature missing: [sch_fq qdisc]: sch_fq qdisc not supported by this kernel\n"}
{"Action":"output","Package":"p","Test":"TestAllowed","Output":"--- SKIP: TestAllowed (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestAllowed"}
{"Action":"run","Package":"p","Test":"TestPar/a"}
{"Action":"run","Package":"p","Test":"TestPar/b"}
{"Action":"output","Package":"p","Test":"TestPar/a","Output":"    a_test.go:9: iperf3 not installed\n"}
{"Action":"output","Package":"p","Test":"TestPar/b","Output":"    a_test.go:10: kernel feature missing: [IPVS]: ok\n"}
{"Action":"pass","Package":"p","Test":"TestPar/b"}
{"Action":"output","Package":"p","Test":"TestPar/a","Output":"    --- SKIP: TestPar/a (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestPar/a"}
{"Action":"pass","Package":"p","Test":"TestPar"}
# p [build errors are not JSON]
`

func TestCheckFlagsEverySkipNotOnTheList(t *testing.T) {
	var out strings.Builder
	skips, err := check(strings.NewReader(log), &out)
	if err != nil {
		t.Fatal(err)
	}
	if len(skips) != 2 {
		t.Fatalf("found %d skips, want 2: %+v", len(skips), skips)
	}
	if s := skips[0]; s.name != "p TestAllowed" || !s.allowed || s.feature != "sch_fq qdisc" {
		t.Errorf("first skip %+v, want TestAllowed allowed for sch_fq qdisc", s)
	}
	if s := skips[1]; s.name != "p TestPar/a" || s.allowed {
		t.Errorf("second skip %+v, want TestPar/a not allowed", s)
	}
	if !strings.Contains(out.String(), "iperf3 not installed") || !strings.Contains(out.String(), "# p [build errors are not JSON]") {
		t.Errorf("the log was not passed through:\n%s", out.String())
	}
	if code := report(io.Discard, skips); code != 1 {
		t.Errorf("report exit status %d, want 1", code)
	}
	if code := report(io.Discard, skips[:1]); code != 0 {
		t.Errorf("report exit status %d for an allowed skip, want 0", code)
	}
}
