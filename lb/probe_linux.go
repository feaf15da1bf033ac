package lb

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/feature"
)

var socketLBProbe = feature.NewProbe("socket load balancing (cgroup sock_addr hooks)", "5.18", probeSocketLB)

// HaveSocketLB reports whether this kernel can run the socket load
// balancer: cgroup sock_addr programs on connect, sendmsg, recvmsg and
// getpeername for IPv4 and IPv6, calling bpf_get_netns_cookie,
// bpf_get_socket_cookie, bpf_ktime_get_coarse_ns and, to refuse with
// EHOSTUNREACH, bpf_set_retval (Linux 5.18). It returns nil if so, an error
// wrapping nodeplane.ErrNotSupported if not. The answer is cached.
func HaveSocketLB() error {
	return socketLBProbe.Result()
}

func probeSocketLB() error {
	return probeSocketLBWith(func(spec *ebpf.ProgramSpec) error {
		prog, err := ebpf.NewProgram(spec)
		if err == nil {
			prog.Close()
		}
		return err
	})
}

// probeSocketLBWith loads a small program for each hook with load and says
// from the errors whether the kernel has what socket LB needs.
func probeSocketLBWith(load func(*ebpf.ProgramSpec) error) error {
	hooks := []struct {
		at     ebpf.AttachType
		refuse bool // the hook may fail the system call
	}{
		{ebpf.AttachCGroupInet4Connect, true},
		{ebpf.AttachCGroupInet6Connect, true},
		{ebpf.AttachCGroupUDP4Sendmsg, true},
		{ebpf.AttachCGroupUDP6Sendmsg, true},
		{ebpf.AttachCGroupUDP4Recvmsg, false},
		{ebpf.AttachCGroupUDP6Recvmsg, false},
		{ebpf.AttachCgroupInet4GetPeername, false},
		{ebpf.AttachCgroupInet6GetPeername, false},
	}
	for _, h := range hooks {
		insns := asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.FnGetNetnsCookie.Call(),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.FnGetSocketCookie.Call(),
			asm.FnKtimeGetCoarseNs.Call(),
		}
		if h.refuse {
			insns = append(insns,
				asm.Mov.Imm(asm.R1, -int32(unix.EHOSTUNREACH)),
				asm.FnSetRetval.Call(),
			)
		}
		insns = append(insns, asm.Mov.Imm(asm.R0, 1), asm.Return())
		err := load(&ebpf.ProgramSpec{
			Type:         ebpf.CGroupSockAddr,
			AttachType:   h.at,
			Instructions: insns,
			License:      "GPL",
		})
		if err != nil {
			return loadProbeError(h.at, err)
		}
	}
	return nil
}

// loadProbeError tells a kernel that lacks a hook or helper from any other
// failure to load a probe program, as cilium/ebpf's features package does.
// Only the first wraps nodeplane.ErrNotSupported; EACCES, EPERM and any
// verifier complaint other than an unknown helper are errors to report,
// not a missing feature, so that they cannot silently skip the suite.
func loadProbeError(at ebpf.AttachType, err error) error {
	notSupported := func() error { return fmt.Errorf("%s: %w: %w", at, nodeplane.ErrNotSupported, err) }
	switch {
	case errors.Is(err, ebpf.ErrNotSupported):
		return notSupported()
	case errors.Is(err, unix.E2BIG):
		// The kernel predates a field of the load attributes.
		return notSupported()
	case errors.Is(err, unix.EINVAL):
		var verr *ebpf.VerifierError
		if !errors.As(err, &verr) || len(verr.Log) == 0 {
			// Rejected before verification: an unknown attach type.
			return notSupported()
		}
		log := strings.Join(verr.Log, "\n")
		for _, unknown := range []string{"invalid func", "unknown func", "program of this type cannot use helper"} {
			if strings.Contains(log, unknown) {
				return notSupported()
			}
		}
	}
	return fmt.Errorf("load %s probe: %w", at, err)
}
