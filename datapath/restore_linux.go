package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/internal/statefile"
)

// lockBPFFSDir takes an exclusive flock on dir, which the kernel drops
// when the descriptor closes, with the process if need be. A crashed
// Datapath never leaves the directory locked.
func lockBPFFSDir(dir string) (*statefile.Lock, error) {
	l, err := statefile.TryLockDir(dir)
	if errors.Is(err, statefile.ErrLocked) {
		return nil, fmt.Errorf("%s: %w", dir, ErrBPFFSDirInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("bpffs directory: %w", err)
	}
	return l, nil
}

// hostInspection is what the kernel says about the host side of an
// endpoint found in the records map.
type hostInspection struct {
	host hostLink // as the kernel has it now
	// links are the pinned tcx links still attached to host, by hook; nil
	// where one is missing or attached elsewhere, and adoption attaches
	// anew.
	links [len(endpointHooks)]link.Link
	// stale says why the interface is not the endpoint's any more; empty
	// if it is.
	stale string
	// repairs says what adoption fixes.
	repairs []string
}

func (h *hostInspection) close() {
	for i, l := range h.links {
		if l != nil {
			l.Close() // pinned: stays attached
			h.links[i] = nil
		}
	}
}

// inspectHost finds the host side of the endpoint rec describes, without
// changing anything. The interface must still have the recorded ifindex in
// the node namespace. With tcx, one of the endpoint's pinned links still
// attached to it proves it is the same device (the kernel unbinds a link
// from a device that goes away), whatever its name is now. Otherwise, and
// with tc, it must have the recorded name and be a veth.
func (n *nodeNamespace) inspectHost(rec endpointRecord, pinDir string) (_ *hostInspection, err error) {
	want := rec.host()
	h := &hostInspection{}
	l, err := n.nl.LinkByIndex(want.index)
	if isLinkNotFound(err) {
		if rec.attachMode() == AttachTCX {
			if err := liveLinkElsewhere(pinDir, want); err != nil {
				return nil, err
			}
		}
		h.stale = fmt.Sprintf("its host interface %s (ifindex %d) is gone", want.name, want.index)
		return h, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find host interface %s: %w", want.name, err)
	}
	attrs := l.Attrs()
	h.host = hostLink{index: attrs.Index, name: attrs.Name, mac: attrs.HardwareAddr}
	same := attrs.Name == want.name && l.Type() == "veth"
	notOurs := fmt.Sprintf("ifindex %d is %s, not its host interface %s any more", want.index, attrs.Name, want.name)

	switch rec.attachMode() {
	case AttachTCX:
		defer func() {
			if err != nil {
				h.close()
			}
		}()
		attached := false
		for i, hook := range endpointHooks {
			pl, err := link.LoadPinnedLink(filepath.Join(pinDir, hook.pin), nil)
			if errors.Is(err, os.ErrNotExist) {
				h.repairs = append(h.repairs, fmt.Sprintf("its %s link was not pinned: attached anew", hook.pin))
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("load %s link: %w", hook.pin, err)
			}
			ok, err := n.tcxLinkAttached(pl, want.index, hook)
			if err != nil || !ok {
				pl.Close()
			}
			if err != nil {
				return nil, fmt.Errorf("%s link: %w", hook.pin, err)
			}
			if !ok {
				h.repairs = append(h.repairs, fmt.Sprintf("its %s link was not attached to %s: attached anew", hook.pin, attrs.Name))
				continue
			}
			h.links[i], attached = pl, true
		}
		if !attached && !same {
			h.close()
			return &hostInspection{stale: notOurs}, nil
		}
	case AttachTC:
		if !same {
			h.stale = notOurs
			return h, nil
		}
		for _, hook := range endpointHooks {
			ok, err := n.tcFilterPresent(l, hook)
			if err != nil {
				return nil, err
			}
			if !ok {
				h.repairs = append(h.repairs, fmt.Sprintf("its %s tc filter was missing: attached anew", hook.filter))
			}
		}
	}
	return h, nil
}

// liveLinkElsewhere returns an error if one of the endpoint's pinned links
// is still bound to a device although the node namespace has no interface
// with the recorded ifindex: the device lives in another namespace, most
// likely because Config.NodeNetNS names the wrong one. Removing the pins
// would then detach its programs and leave it unfiltered, so restore
// stops instead.
func liveLinkElsewhere(pinDir string, want hostLink) error {
	for _, hook := range endpointHooks {
		l, err := link.LoadPinnedLink(filepath.Join(pinDir, hook.pin), nil)
		if err != nil {
			continue // no pin, nothing to detach
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			return fmt.Errorf("%s link: %w", hook.pin, err)
		}
		if tcx := info.TCX(); tcx != nil && tcx.Ifindex != 0 {
			return fmt.Errorf("host interface %s: the node namespace has no ifindex %d, yet the %s link is attached to a live ifindex %d: is NodeNetNS the namespace the endpoint was added in?",
				want.name, want.index, hook.pin, tcx.Ifindex)
		}
	}
	return nil
}

// adoptAttachments puts progs on the inspected interface in place of what
// runs there: a tcx link's program is replaced in one step (link update),
// as is a tc filter's, so the interface is never without a program. Hooks
// whose link was missing get a new one, pinned in pinDir. On error the
// attachments made so far are released, not detached: every hook keeps
// its old or its new program.
func (n *nodeNamespace) adoptAttachments(mode AttachMode, h *hostInspection, progs *endpointPrograms, pinDir string) (_ []attachment, err error) {
	var as []attachment
	defer func() {
		if err != nil {
			for _, a := range as {
				_ = a.release()
			}
		}
	}()
	if mode == AttachTCX {
		if err := os.MkdirAll(pinDir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory: %w", err)
		}
	}
	for i, hook := range endpointHooks {
		prog := hook.program(progs)
		switch {
		case mode == AttachTC:
			a, err := n.attachTC(h.host.index, hook, prog)
			if err != nil {
				return nil, err
			}
			as = append(as, a)
		case h.links[i] != nil:
			if err := h.links[i].Update(prog); err != nil {
				return nil, fmt.Errorf("replace the program of the %s link: %w", hook.pin, err)
			}
			as = append(as, tcxAttachment{h.links[i]})
			h.links[i] = nil
		default:
			pin := filepath.Join(pinDir, hook.pin)
			if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("remove stale %s link pin: %w", hook.pin, err)
			}
			a, err := n.attachTCX(h.host.index, hook, prog, pinDir)
			if err != nil {
				return nil, fmt.Errorf("attach %s: %w", hook.pin, err)
			}
			as = append(as, a)
		}
	}
	return as, nil
}

// removeInterruptedHost deletes the host side of an endpoint whose
// AddEndpoint or Delete a dead process left half done: the interface at
// the recorded ifindex if it still has the recorded name, or, when the
// ifindex was never recorded (the process died right after creating the
// veth pair), the veth with the recorded name.
func (n *nodeNamespace) removeInterruptedHost(rec endpointRecord) error {
	want := rec.host()
	var (
		l   netlink.Link
		err error
	)
	if want.index != 0 {
		l, err = n.nl.LinkByIndex(want.index)
	} else {
		l, err = n.nl.LinkByName(want.name)
	}
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find host interface %s: %w", want.name, err)
	}
	if l.Attrs().Name != want.name || l.Type() != "veth" {
		return nil
	}
	if err := n.nl.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete host interface %s: %w", want.name, err)
	}
	return nil
}
