package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/internal/netnsutil"
	"github.com/nodeplane/nodeplane/internal/tcattach"
)

// HaveTCX reports whether the kernel can attach programs with tcx links
// (Linux 6.6). The error wraps nodeplane.ErrNotSupported when it cannot.
// The answer is cached.
func HaveTCX() error { return tcattach.HaveTCX() }

// attachment is one program attached to one hook of an interface.
type attachment interface {
	// release lets go of the process's handle. A pinned tcx link and a
	// tc filter stay attached; an unpinned tcx link is detached.
	release() error
	// detach removes the attachment from the kernel, and its pin.
	detach() error
	// replace puts prog in place of the attached program in one step:
	// every packet meets the old program or the new one.
	replace(prog *ebpf.Program) error
}

// endpointHook is one of the two attachment points of an endpoint's
// host-side interface.
type endpointHook struct {
	pin    string // file name of the tcx link's pin
	filter string // name of the tc filter
	egress bool
}

var endpointHooks = [2]endpointHook{
	{pin: "from_endpoint", filter: datapathProgNpFromEndpoint},
	{pin: "to_endpoint", filter: datapathProgNpToEndpoint, egress: true},
}

func (h endpointHook) program(p *endpointPrograms) *ebpf.Program {
	if h.egress {
		return p.to
	}
	return p.from
}

func (h endpointHook) tcxType() ebpf.AttachType {
	if h.egress {
		return ebpf.AttachTCXEgress
	}
	return ebpf.AttachTCXIngress
}

func (h endpointHook) tcParent() uint32 {
	if h.egress {
		return netlink.HANDLE_MIN_EGRESS
	}
	return netlink.HANDLE_MIN_INGRESS
}

// attach attaches the endpoint's programs to the host-side interface:
// from-endpoint on ingress, to-endpoint on egress. With a pinDir, tcx
// links are pinned there, so that they outlive the process. On error
// nothing stays attached or pinned.
func (n *nodeNamespace) attach(mode AttachMode, ifindex int, progs *endpointPrograms, pinDir string) ([]attachment, error) {
	return n.attachHooks(mode, ifindex, endpointHooks[:], []*ebpf.Program{progs.from, progs.to}, pinDir)
}

// attachHooks attaches progs[i] to hooks[i] of the interface with
// ifindex, with tcx or tc as mode says: the one place that chooses. With a
// pinDir, tcx links are pinned there. On error nothing stays attached or
// pinned.
func (n *nodeNamespace) attachHooks(mode AttachMode, ifindex int, hooks []endpointHook, progs []*ebpf.Program, pinDir string) ([]attachment, error) {
	if mode == AttachTCX && pinDir != "" {
		if err := os.MkdirAll(pinDir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory: %w", err)
		}
	}
	var as []attachment
	for i, h := range hooks {
		var a attachment
		var err error
		if mode == AttachTCX {
			a, err = n.attachTCX(ifindex, h, progs[i], pinDir)
		} else {
			a, err = n.attachTC(ifindex, h, progs[i])
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

func (a tcxAttachment) release() error { return a.l.Close() }

func (a tcxAttachment) detach() error { return errors.Join(a.l.Unpin(), a.l.Close()) }

// replace updates the link's program (BPF_LINK_UPDATE): the link, its pin
// and its place among the interface's programs stay.
func (a tcxAttachment) replace(prog *ebpf.Program) error { return a.l.Update(prog) }

func (n *nodeNamespace) attachTCX(ifindex int, h endpointHook, prog *ebpf.Program, pinDir string) (attachment, error) {
	var l link.Link
	// tcx resolves the ifindex in the namespace of the calling thread.
	err := inNetNS(n.ns, func() (err error) {
		l, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: h.tcxType()})
		return err
	})
	if err != nil {
		return nil, err
	}
	if pinDir != "" {
		if err := l.Pin(filepath.Join(pinDir, h.pin)); err != nil {
			l.Close()
			return nil, fmt.Errorf("pin %s link: %w", h.pin, err)
		}
	}
	return tcxAttachment{l}, nil
}

type tcAttachment struct {
	nl     *netlink.Handle
	filter *netlink.BpfFilter
}

// release leaves the filter in place: it holds the program, not us.
func (a tcAttachment) release() error { return nil }

// replace replaces the filter's program (RTM_NEWTFILTER with
// NLM_F_REPLACE on the same handle and priority), which cls_bpf swaps in
// one step.
func (a tcAttachment) replace(prog *ebpf.Program) error {
	f := *a.filter
	f.Fd = prog.FD()
	if err := a.nl.FilterReplace(&f); err != nil {
		return fmt.Errorf("replace tc filter: %w", err)
	}
	a.filter.Fd = f.Fd
	return nil
}

func (a tcAttachment) detach() error { return tcattach.DeleteClsact(a.nl, a.filter) }

// attachTC adds the filter, or replaces the program of the one there
// (tcattach.AddClsact).
func (n *nodeNamespace) attachTC(ifindex int, h endpointHook, prog *ebpf.Program) (attachment, error) {
	filter, err := tcattach.AddClsact(n.nl, h.tcFilter(ifindex), prog)
	if err != nil {
		return nil, err
	}
	return tcAttachment{nl: n.nl, filter: filter}, nil
}

// tcFilter is the datapath's filter for hook h of an interface.
func (h endpointHook) tcFilter(ifindex int) tcattach.Filter {
	return tcattach.Filter{Ifindex: ifindex, Egress: h.egress, Name: h.filter, Priority: 1, Handle: 1}
}

// tcFilterPresent reports whether hook h of the interface has the
// datapath's filter.
func (n *nodeNamespace) tcFilterPresent(l netlink.Link, h endpointHook) (bool, error) {
	filters, err := n.nl.FilterList(l, h.tcParent())
	if err != nil {
		return false, fmt.Errorf("list tc filters: %w", err)
	}
	want := h.tcFilter(l.Attrs().Index).BpfFilter()
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		if ok && bf.Handle == want.Handle && bf.Priority == want.Priority && bf.Name == want.Name {
			return true, nil
		}
	}
	return false, nil
}

// tcxLinkAttached reports whether l is a tcx link at hook h of the
// interface with ifindex in the node namespace. The kernel keeps a link's
// ifindex for the life of the device and reports 0 once it is gone, so a
// link that passes this check is attached to that very device.
func (n *nodeNamespace) tcxLinkAttached(l link.Link, ifindex int, h endpointHook) (bool, error) {
	info, err := l.Info()
	if err != nil {
		return false, err
	}
	if tcx := info.TCX(); tcx == nil || tcx.Ifindex != uint32(ifindex) {
		return false, nil
	}
	var res *link.QueryResult
	err = inNetNS(n.ns, func() (err error) {
		res, err = link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: h.tcxType()})
		return err
	})
	if errors.Is(err, unix.ENODEV) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("query tcx programs of ifindex %d: %w", ifindex, err)
	}
	for _, p := range res.Programs {
		if id, ok := p.LinkID(); ok && id == info.ID {
			return true, nil
		}
	}
	return false, nil
}

// inNetNS runs fn on a locked OS thread that has entered ns.
func inNetNS(ns netns.NsHandle, fn func() error) error { return netnsutil.Do(ns, fn) }
