package tcattach

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
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

// Filter names a cls_bpf filter: the slot (priority and handle) of one
// hook of one interface that a program owns in clsact mode.
type Filter struct {
	Ifindex  int
	Egress   bool
	Name     string // the filter's name, as tc shows it
	Priority uint16
	Handle   uint32
}

// BpfFilter returns the netlink description of f, without a program.
func (f Filter) BpfFilter() *netlink.BpfFilter {
	parent := uint32(netlink.HANDLE_MIN_INGRESS)
	if f.Egress {
		parent = netlink.HANDLE_MIN_EGRESS
	}
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: f.Ifindex,
			Parent:    parent,
			Handle:    f.Handle,
			Priority:  f.Priority,
			Protocol:  unix.ETH_P_ALL,
		},
		Name:         f.Name,
		DirectAction: true,
	}
}

// AddClsact adds a clsact qdisc to the interface unless it has one and puts
// prog into f's slot: a new filter, or the program of the filter there
// replaced (the kernel swaps a cls_bpf filter's program in one step, so a
// replaced filter never passes a packet without a program). nl is the
// netlink handle of the interface's namespace.
func AddClsact(nl *netlink.Handle, f Filter, prog *ebpf.Program) (*netlink.BpfFilter, error) {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: f.Ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := nl.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("add clsact qdisc: %w", err)
	}
	filter := f.BpfFilter()
	filter.Fd = prog.FD()
	if err := nl.FilterReplace(filter); err != nil {
		return nil, fmt.Errorf("add tc filter %s: %w", f.Name, err)
	}
	return filter, nil
}

// DeleteClsact removes a filter AddClsact added. A filter or interface
// that is gone already is not an error; the qdisc stays.
func DeleteClsact(nl *netlink.Handle, filter *netlink.BpfFilter) error {
	err := nl.FilterDel(filter)
	if err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete tc filter: %w", err)
	}
	return nil
}

// Mode is how [Attach] attached a program.
type Mode uint8

const (
	// TCX: a tcx link (Linux 6.6).
	TCX Mode = iota + 1
	// Clsact: a cls_bpf filter under a clsact qdisc.
	Clsact
)

func (m Mode) String() string {
	switch m {
	case TCX:
		return "tcx"
	case Clsact:
		return "tc clsact"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// Attachment is a program Attach attached. Close detaches it.
type Attachment struct {
	mode   Mode
	link   link.Link
	nl     *netlink.Handle
	filter *netlink.BpfFilter
}

// Mode says how the program is attached.
func (a *Attachment) Mode() Mode { return a.mode }

// Close detaches the program.
func (a *Attachment) Close() error {
	if a.link != nil {
		return a.link.Close()
	}
	err := DeleteClsact(a.nl, a.filter)
	a.nl.Close()
	return err
}

// Attach attaches prog to the hook f names of the interface f.Ifindex in
// the calling thread's network namespace, in the given mode; mode 0 means
// a tcx link if the kernel has tcx ([HaveTCX]) and f's clsact slot
// otherwise (f.Name, Priority and Handle matter only there). A clsact
// filter outlives the process that added it, unlike an unpinned tcx link,
// until Close; a filter already in the slot is replaced.
func Attach(f Filter, prog *ebpf.Program, mode Mode) (*Attachment, error) {
	if mode == 0 {
		switch err := HaveTCX(); {
		case err == nil:
			mode = TCX
		case errors.Is(err, nodeplane.ErrNotSupported):
			mode = Clsact
		default:
			return nil, err
		}
	}
	switch mode {
	case TCX:
		at := ebpf.AttachTCXIngress
		if f.Egress {
			at = ebpf.AttachTCXEgress
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: f.Ifindex, Program: prog, Attach: at})
		if err != nil {
			return nil, err
		}
		return &Attachment{mode: TCX, link: l}, nil
	case Clsact:
	default:
		return nil, fmt.Errorf("tc attach mode %d", mode)
	}
	// A handle opened now works in this thread's namespace, also when
	// Close runs on another thread.
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	filter, err := AddClsact(nl, f, prog)
	if err != nil {
		nl.Close()
		return nil, err
	}
	return &Attachment{mode: Clsact, nl: nl, filter: filter}, nil
}
