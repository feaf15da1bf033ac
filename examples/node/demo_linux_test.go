package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// TestPrivilegedDemo runs the demo as the README's command does (the
// built binary with -demo) and checks what a newcomer would look for: it
// exits 0 by itself within a minute, prints an allowed and a dropped flow
// with both sides' labels and the drop reason, and leaves no interface,
// mount, temporary directory or process behind.
func TestPrivilegedDemo(t *testing.T) {
	testutils.RequirePrivileged(t)
	bin := agentBinary(t)
	linksBefore := linkNames(t)
	mountsBefore := demoMounts(t)
	tmpBefore := demoTempDirs(t)
	progsBefore := cgroupConnectProgs(t)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-demo")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("demo took %v; output:\n%s\nstderr:\n%s", time.Since(start), stdout.String(), stderr.String())
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	out := stdout.String()
	var allowed, dropped bool
	for _, line := range strings.Split(out, "\n") {
		labelled := strings.Contains(line, "k8s:app=web") && strings.Contains(line, "k8s:io.kubernetes.pod.namespace=demo")
		if labelled && strings.Contains(line, "k8s:app=api") && strings.Contains(line, ":8080 TCP") && strings.Contains(line, "ALLOWED") {
			allowed = true
		}
		if labelled && strings.Contains(line, "k8s:app=db") && strings.Contains(line, ":5432 TCP") && strings.Contains(line, "DROPPED (POLICY_DENIED)") {
			dropped = true
		}
	}
	if !allowed || !dropped {
		t.Errorf("want an allowed web -> api:8080 flow (%v) and a dropped web -> db:5432 flow (%v) with labels", allowed, dropped)
	}
	if !strings.Contains(out, "summary:") || !strings.Contains(out, "policy enforced as written: true") {
		t.Error("no summary")
	}

	if after := linkNames(t); !slices.Equal(linksBefore, after) {
		t.Errorf("interfaces before %v, after %v", linksBefore, after)
	}
	if after := demoMounts(t); !slices.Equal(mountsBefore, after) {
		t.Errorf("mounts left behind: %v", after)
	}
	if after := demoTempDirs(t); !slices.Equal(tmpBefore, after) {
		t.Errorf("temporary directories left behind: %v", after)
	}
	if after := cgroupConnectProgs(t); !slices.Equal(progsBefore, after) {
		t.Errorf("connect programs on the cgroup: before %v, after %v", progsBefore, after)
	}
	// The process is gone (Run waited for it), and it started none: no
	// process still runs the binary.
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		if exe, err := os.Readlink(p); err == nil && exe == bin {
			t.Errorf("a process still runs the demo: %s", p)
		}
	}
}

// cgroupConnectProgs lists the IDs of the programs attached to this
// process's cgroup (which the demo inherits and load-balances) at connect().
func cgroupConnectProgs(t *testing.T) []ebpf.ProgramID {
	cg, err := ownCgroup()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ids []ebpf.ProgramID
	for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range res.Programs {
			ids = append(ids, p.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

func linkNames(t *testing.T) []string {
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	slices.Sort(names)
	return names
}

func demoMounts(t *testing.T) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var ms []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "nodeplane-demo-") {
			ms = append(ms, l)
		}
	}
	return ms
}

func demoTempDirs(t *testing.T) []string {
	ds, err := filepath.Glob(filepath.Join(os.TempDir(), "nodeplane-demo-*"))
	if err != nil {
		t.Fatal(err)
	}
	return ds
}
