// Command skipcheck reads the output of `go test -json` on stdin, prints the
// tests' output as `go test -v` would, and fails when a test skipped for any
// reason other than a kernel feature on the documented allow-list
// ([testutils.AllowedMissingFeatures]). CI runs the README's test command
// through it, so that a skip cannot pass unnoticed:
//
//	go test -json ./... 2>&1 | go run ./internal/testutils/skipcheck
//
// Exit status: 0 if every skip is allowed, 1 if not, 2 on a read error.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// event is the part of a test2json record skipcheck needs.
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// skip is one skipped test and what it said.
type skip struct {
	name    string // package and test
	feature string // the feature its message names, if any
	allowed bool
	output  string
}

func main() {
	skips, err := check(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "skipcheck:", err)
		os.Exit(2)
	}
	os.Exit(report(os.Stdout, skips))
}

// check copies the test output in r to w and returns the skipped tests.
// Lines that are not JSON (build errors on stderr) are copied as they are.
func check(r io.Reader, w io.Writer) ([]skip, error) {
	output := make(map[string]*strings.Builder) // by package and test
	var skips []skip
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil {
			fmt.Fprintf(w, "%s\n", line)
			continue
		}
		key := ev.Package + " " + ev.Test
		switch ev.Action {
		case "output":
			io.WriteString(w, ev.Output)
			if ev.Test != "" {
				b := output[key]
				if b == nil {
					b = new(strings.Builder)
					output[key] = b
				}
				b.WriteString(ev.Output)
			}
		case "skip":
			if ev.Test == "" {
				continue // a package without tests
			}
			out := ""
			if b := output[key]; b != nil {
				out = b.String()
			}
			feature, allowed := testutils.AllowedSkip(out)
			skips = append(skips, skip{name: key, feature: feature, allowed: allowed, output: out})
		}
		if ev.Action == "pass" || ev.Action == "fail" || ev.Action == "skip" {
			delete(output, key)
		}
	}
	return skips, sc.Err()
}

// report lists the skips and returns the exit status.
func report(w io.Writer, skips []skip) int {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "skipped tests (each must name a kernel feature on the allowed list):")
	if len(skips) == 0 {
		fmt.Fprintln(w, "  none")
	}
	status := 0
	for _, s := range skips {
		verdict := "allowed: " + s.feature
		if !s.allowed {
			verdict = "NOT ALLOWED"
			if s.feature != "" {
				verdict += " (feature " + s.feature + " is not on the list)"
			}
			status = 1
		}
		fmt.Fprintf(w, "  %s: %s\n", s.name, verdict)
		for _, l := range strings.Split(strings.TrimRight(s.output, "\n"), "\n") {
			if strings.Contains(l, "--- SKIP") || strings.HasPrefix(l, "=== ") || l == "" {
				continue
			}
			fmt.Fprintf(w, "      %s\n", strings.TrimSpace(l))
		}
	}
	if status != 0 {
		fmt.Fprintln(w, "a test skipped for a reason not on internal/testutils/skips.go's list; fix the test or the probe, or document the missing feature there and in README.md")
	}
	return status
}
