package datapath

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/internal/feature"
)

var tcxProbe = feature.NewProbe("tcx", "6.6", func() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load probe program: %w", err)
	}
	defer prog.Close()
	// An ifindex that cannot exist: a kernel with tcx gets as far as
	// looking it up and says ENODEV; one without rejects the attach type.
	l, err := link.AttachTCX(link.TCXOptions{Interface: int(^uint32(0) >> 1), Program: prog, Attach: ebpf.AttachTCXIngress})
	switch {
	case err == nil:
		l.Close()
		return nil
	case errors.Is(err, unix.ENODEV):
		return nil
	}
	return err
})

// HaveTCX reports whether the kernel can attach programs with tcx links
// (Linux 6.6). The error wraps nodeplane.ErrNotSupported when it cannot.
// The answer is cached.
func HaveTCX() error { return tcxProbe.Result() }

// attachment is one program attached to one hook of an interface.
type attachment interface {
	detach() error
}

// attach attaches the endpoint's programs to the host-side interface:
// from-endpoint on ingress, to-endpoint on egress. On error nothing stays
// attached.
func (n *nodeNamespace) attach(mode AttachMode, ifindex int, progs *endpointPrograms) ([]attachment, error) {
	var as []attachment
	for _, h := range []struct {
		prog   *ebpf.Program
		egress bool
	}{{progs.from, false}, {progs.to, true}} {
		var a attachment
		var err error
		if mode == AttachTCX {
			a, err = n.attachTCX(ifindex, h.prog, h.egress)
		} else {
			a, err = n.attachTC(ifindex, h.prog, h.egress)
		}
		if err != nil {
			for _, a := range as {
				_ = a.detach()
			}
			return nil, fmt.Errorf("attach to ifindex %d (%s): %w", ifindex, mode, err)
		}
		as = append(as, a)
	}
	return as, nil
}

type tcxAttachment struct{ l link.Link }

func (a tcxAttachment) detach() error { return a.l.Close() }

func (n *nodeNamespace) attachTCX(ifindex int, prog *ebpf.Program, egress bool) (attachment, error) {
	typ := ebpf.AttachTCXIngress
	if egress {
		typ = ebpf.AttachTCXEgress
	}
	var l link.Link
	// tcx resolves the ifindex in the namespace of the calling thread.
	err := inNetNS(n.ns, func() (err error) {
		l, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: typ})
		return err
	})
	if err != nil {
		return nil, err
	}
	return tcxAttachment{l}, nil
}

type tcAttachment struct {
	nl     *netlink.Handle
	filter *netlink.BpfFilter
}

func (a tcAttachment) detach() error {
	err := a.nl.FilterDel(a.filter)
	if err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete tc filter: %w", err)
	}
	return nil
}

func (n *nodeNamespace) attachTC(ifindex int, prog *ebpf.Program, egress bool) (attachment, error) {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := n.nl.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("add clsact qdisc: %w", err)
	}
	parent := uint32(netlink.HANDLE_MIN_INGRESS)
	name := datapathProgNpFromEndpoint
	if egress {
		parent, name = netlink.HANDLE_MIN_EGRESS, datapathProgNpToEndpoint
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    parent,
			Handle:    1,
			Priority:  1,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         name,
		DirectAction: true,
	}
	if err := n.nl.FilterReplace(filter); err != nil {
		return nil, fmt.Errorf("add tc filter: %w", err)
	}
	return tcAttachment{nl: n.nl, filter: filter}, nil
}

// inNetNS runs fn on a locked OS thread that has entered ns. A thread that
// cannot return to its namespace stays locked, so the runtime retires it
// rather than reuse it.
func inNetNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(fnErr, fmt.Errorf("leave namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}
