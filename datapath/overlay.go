package datapath

import (
	"errors"
	"fmt"
	"sync"
)

// overlayConfig mirrors struct np_overlay_config (bpf/overlay.h).
type overlayConfig struct {
	TunnelIfindex uint32 `btf:"tunnel_ifindex"`
	Flags         uint32 `btf:"flags"`
}

// overlayHooks are the tunnel device's: from-overlay on ingress, to-overlay
// (the node's own traffic) on egress.
var overlayHooks = []endpointHook{
	{pin: "from_overlay", filter: datapathProgNpFromOverlay},
	{pin: "to_overlay", filter: datapathProgNpToOverlay, egress: true},
}

// overlayPinDir holds the tunnel device's pinned links under BPFFSDir.
const overlayPinDir = "overlay"

// Overlay is the datapath's side of a node's tunnel device: the programs
// on the device and the setting that sends traffic to other nodes' pods
// there. Package overlay creates the device; [Datapath.AttachOverlay]
// makes this.
//
// While it is attached, a packet an endpoint sends to a prefix whose
// ipcache entry has a tunnel endpoint (and no FlagSkipTunnel) is
// encapsulated towards that address with the sender's identity as VNI.
// The node's own packets that its routing table sends into the device
// (package overlay's Router with a Device) are encapsulated with
// reserved:remote-node as VNI, as Cilium sends host traffic, and dropped
// with [monitor.DropNoTunnelEndpoint] when the ipcache has no tunnel
// endpoint for them. A packet arriving on the device is checked (its outer
// source must be reserved:remote-node in the ipcache, its VNI an identity
// a node sends) and, for a local endpoint, decided by conntrack and the
// endpoint's ingress policy with the VNI as source identity. Drops carry
// [monitor.DropNoTunnelKey], [monitor.DropUnknownSender],
// [monitor.DropInvalidIdentity] or the policy's reason, and are counted
// in [Datapath.Counters] under [FromOverlay] and [ToOverlay].
//
// Without pinning the attachment belongs to the process: Close, or the
// process ending, detaches it (tcx). In pinned mode (Config.BPFFSDir) its
// tcx links are pinned and the configuration lives in a pinned map, so
// the overlay keeps working while no process runs; [Datapath.Close]
// leaves it attached, and the next AttachOverlay on the same device
// adopts it, swapping in its programs without a moment unattached.
// Close detaches it in every mode.
type Overlay struct {
	d       *Datapath
	ifindex int

	mu    sync.Mutex
	progs *nodePrograms
}

// AttachOverlay loads the tunnel device's programs, attaches them to tc
// ingress and egress of the device with ifindex in the node namespace,
// and sends encapsulated traffic there. One Overlay per Datapath at a
// time: a second is refused (ErrInvalidConfig) until the first is closed.
// In pinned mode, programs an earlier process left on the device are
// replaced in place ([Overlay.Adopted]).
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
	np, err := d.attachNodePrograms(overlayPinDir, ifindex, overlayHooks, nodeLoad{})
	if err != nil {
		return nil, fmt.Errorf("attach overlay to ifindex %d: %w", ifindex, err)
	}
	if err := d.maps.overlay.Put(uint32(0), overlayConfig{TunnelIfindex: uint32(ifindex)}); err != nil {
		_ = np.detach()
		return nil, fmt.Errorf("attach overlay: write configuration: %w", err)
	}
	o := &Overlay{d: d, ifindex: ifindex, progs: np}
	d.mu.Lock()
	d.overlay = o
	d.mu.Unlock()
	return o, nil
}

// Ifindex returns the tunnel device's interface index.
func (o *Overlay) Ifindex() int { return o.ifindex }

// Adopted reports whether AttachOverlay found the device's programs of an
// earlier process (pinned mode) and replaced them in place.
func (o *Overlay) Adopted() bool { return o.progs.adopted }

// release lets go of the handles and leaves the overlay working: for
// Datapath.Close in pinned mode.
func (o *Overlay) release() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.progs == nil {
		return nil
	}
	err := o.progs.release()
	o.progs = nil
	return err
}

// Close stops encapsulating (traffic to other nodes goes to the stack
// again) and detaches the programs. Closing twice, or after
// [Datapath.Close], is not an error.
func (o *Overlay) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.progs == nil {
		return nil
	}
	o.d.mu.Lock()
	if o.d.overlay == o {
		o.d.overlay = nil
	}
	closed := o.d.closed // the Datapath's maps are gone with it
	o.d.mu.Unlock()
	var errs []error
	if !closed {
		if err := o.d.maps.overlay.Put(uint32(0), overlayConfig{}); err != nil {
			errs = append(errs, fmt.Errorf("clear overlay configuration: %w", err))
		}
	}
	errs = append(errs, o.progs.detach())
	o.progs = nil
	o.d.unclaim(&o.d.overlayOn)
	return errors.Join(errs...)
}
