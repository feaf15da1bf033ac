package lb

import (
	"errors"
	"fmt"

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
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type:         ebpf.CGroupSockAddr,
			AttachType:   h.at,
			Instructions: insns,
			License:      "GPL",
		})
		switch {
		case err == nil:
			prog.Close()
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.E2BIG), errors.Is(err, unix.EACCES):
			// An unknown attach type or helper: the verifier rejects it.
			return fmt.Errorf("%s: %w: %w", h.at, nodeplane.ErrNotSupported, err)
		default:
			return err
		}
	}
	return nil
}
