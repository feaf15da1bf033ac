package datapath

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
)

// overlayConfig mirrors struct np_overlay_config (bpf/overlay.h).
type overlayConfig struct {
	TunnelIfindex uint32 `btf:"tunnel_ifindex"`
	Flags         uint32 `btf:"flags"`
}

var overlayHook = endpointHook{pin: "from_overlay", filter: datapathProgNpFromOverlay}

// Overlay is the datapath's side of a node's tunnel device: the program on
// the device's ingress and the setting that sends traffic to other nodes'
// pods there. Package overlay creates the device; [Datapath.AttachOverlay]
// makes this.
//
// While it is attached, a packet an endpoint sends to a prefix whose
// ipcache entry has a tunnel endpoint (and no FlagSkipTunnel) is
// encapsulated towards that address with the sender's identity as VNI,
// and a packet arriving on the device is checked (its outer source must
// be reserved:remote-node in the ipcache, its VNI an identity a node
// sends) and, for a local endpoint, decided by conntrack and the
// endpoint's ingress policy with the VNI as source identity. Drops carry
// [monitor.DropNoTunnelKey], [monitor.DropUnknownSender],
// [monitor.DropInvalidIdentity] or the policy's reason.
//
// The attachment belongs to the process (it is not pinned): Close, or the
// process ending, detaches it.
type Overlay struct {
	d       *Datapath
	ifindex int

	mu   sync.Mutex
	prog *ebpf.Program
	att  attachment
}

// AttachOverlay loads the tunnel device's program, attaches it to tc
// ingress of the device with ifindex in the node namespace, and sends
// encapsulated traffic there. One Overlay per Datapath at a time: a second
// is refused (ErrInvalidConfig) until the first is closed. With pinned maps the
// setting outlives a crash while the program does not; attach again after
// a restart.
func (d *Datapath) AttachOverlay(ifindex int) (_ *Overlay, err error) {
	if ifindex <= 0 {
		return nil, fmt.Errorf("attach overlay: ifindex %d: %w", ifindex, ErrInvalidConfig)
	}
	if err := d.claim(&d.overlayOn, "overlay"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.unclaim(&d.overlayOn)
		}
	}()
	spec := d.spec.Copy()
	onlyPrograms(spec, datapathProgNpFromOverlay)
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: d.maps.replacements()})
	if err != nil {
		return nil, fmt.Errorf("attach overlay: load program: %w", err)
	}
	prog := coll.DetachProgram(datapathProgNpFromOverlay)
	coll.Close()
	o := &Overlay{d: d, ifindex: ifindex, prog: prog}
	defer func() {
		if err != nil {
			o.prog.Close()
		}
	}()
	if d.attach == AttachTCX {
		o.att, err = d.node.attachTCX(ifindex, overlayHook, prog, "")
	} else {
		o.att, err = d.node.attachTC(ifindex, overlayHook, prog)
	}
	if err != nil {
		return nil, fmt.Errorf("attach overlay to ifindex %d: %w", ifindex, err)
	}
	if err := d.maps.overlay.Put(uint32(0), overlayConfig{TunnelIfindex: uint32(ifindex)}); err != nil {
		_ = o.att.detach()
		return nil, fmt.Errorf("attach overlay: write configuration: %w", err)
	}
	return o, nil
}

// Ifindex returns the tunnel device's interface index.
func (o *Overlay) Ifindex() int { return o.ifindex }

// Close stops encapsulating (traffic to other nodes goes to the stack
// again) and detaches the program. Closing twice is not an error.
func (o *Overlay) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.prog == nil {
		return nil
	}
	var errs []error
	if err := o.d.maps.overlay.Put(uint32(0), overlayConfig{}); err != nil {
		errs = append(errs, fmt.Errorf("clear overlay configuration: %w", err))
	}
	errs = append(errs, o.att.detach(), o.prog.Close())
	o.prog = nil
	o.d.unclaim(&o.d.overlayOn)
	return errors.Join(errs...)
}
