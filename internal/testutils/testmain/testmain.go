// Package testmain runs a package's tests and fails them when they leak
// kernel objects: BPF maps, programs and links, or namespace references.
//
// Use it from TestMain in every package whose tests hold kernel objects:
//
//	func TestMain(m *testing.M) { testmain.Run(m) }
package testmain

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Run runs m, then compares the process's open file descriptors with those
// open before: any new one that refers to a BPF object or a namespace is a
// leak, which is printed and turns the exit code into 99. Run does not
// return.
func Run(m *testing.M) {
	before, err := kernelObjectFDs()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testmain: list fds:", err)
		os.Exit(98)
	}
	code := m.Run()

	after, err := kernelObjectFDs()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testmain: list fds:", err)
		os.Exit(98)
	}
	var leaks []string
	for fd, target := range after {
		if before[fd] != target {
			leaks = append(leaks, fmt.Sprintf("fd %d -> %s", fd, target))
		}
	}
	if len(leaks) > 0 {
		sort.Strings(leaks)
		fmt.Fprintf(os.Stderr, "testmain: %d kernel object fd(s) leaked by the tests:\n  %s\n",
			len(leaks), strings.Join(leaks, "\n  "))
		if code == 0 {
			code = 99
		}
	}
	os.Exit(code)
}

// kernelObjectFDs returns the process's fds that point at BPF objects
// (anon_inode:bpf-map, bpf-prog, bpf_link, ...) or namespaces (net:[...]).
func kernelObjectFDs() (map[int]string, error) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	fds := make(map[int]string)
	for _, e := range entries {
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err != nil {
			continue
		}
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // closed while we looked
		}
		if isKernelObject(target) {
			fds[fd] = target
		}
	}
	return fds, nil
}

func isKernelObject(target string) bool {
	return strings.HasPrefix(target, "anon_inode:bpf") ||
		strings.HasPrefix(target, "anon_inode:[bpf") ||
		strings.HasPrefix(target, "net:[")
}
