package datapath

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/identity"
)

// The records map holds one endpointRecord per endpoint, keyed by endpoint
// ID: what a later Datapath needs to find the endpoint again, and how far
// adding or deleting it got. Only Go reads and writes it; the programs
// never look at it, so it has no twin in bpf/maps.h. With Config.BPFFSDir
// it is pinned beside the other maps, and it lives exactly as long as the
// attachments it describes.
const recordsMapName = "np_ep_records"

// recordVersion is the format of endpointRecord. A Datapath refuses
// records of a format it does not know rather than guess at them.
const recordVersion = 1

// recordState says how far an endpoint's setup or teardown got. Anything
// but recordReady found by New is the trace of a process that died in
// AddEndpoint or Endpoint.Delete, and is cleaned up.
type recordState uint8

const (
	recordCreating recordState = 1
	recordReady    recordState = 2
	recordDeleting recordState = 3
)

func (s recordState) String() string {
	switch s {
	case recordCreating:
		return "creating"
	case recordReady:
		return "ready"
	case recordDeleting:
		return "deleting"
	}
	return fmt.Sprintf("recordState(%d)", uint8(s))
}

// endpointRecord.Flags.
const (
	recordHasIPv4 = 1 << iota
	recordHasIPv6
	recordDetached
	recordAttachTC // else tcx
)

// endpointRecord is the value of the records map. The layout is fixed,
// without implicit padding; it changes only with recordVersion.
type endpointRecord struct {
	Version     uint8
	State       recordState
	Flags       uint8
	_           uint8
	Identity    uint32
	HostIfindex uint32
	IPv4        [4]byte
	IPv6        [16]byte
	MAC         [6]byte
	HostMAC     [6]byte
	HostIfName  [16]byte // NUL-padded
}

// endpointRecordSize is the value size of the records map.
const endpointRecordSize = 60

func recordsMapSpec(maxEndpoints int) *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       recordsMapName,
		Type:       ebpf.Hash,
		KeySize:    4,
		ValueSize:  endpointRecordSize,
		MaxEntries: uint32(maxEndpoints),
		Flags:      1, // BPF_F_NO_PREALLOC
		Pinning:    ebpf.PinByName,
	}
}

// newEndpointRecord describes an endpoint being added with cfg, attached
// with mode.
func newEndpointRecord(cfg EndpointConfig, mode AttachMode) endpointRecord {
	r := endpointRecord{
		Version:  recordVersion,
		State:    recordCreating,
		Identity: uint32(cfg.Identity),
		MAC:      [6]byte(cfg.MAC),
	}
	if cfg.IPv4.IsValid() {
		r.Flags |= recordHasIPv4
		r.IPv4 = cfg.IPv4.As4()
	}
	if cfg.IPv6.IsValid() {
		r.Flags |= recordHasIPv6
		r.IPv6 = cfg.IPv6.As16()
	}
	if cfg.Detached {
		r.Flags |= recordDetached
	} else {
		copy(r.HostIfName[:], cfg.HostIfName)
		if mode == AttachTC {
			r.Flags |= recordAttachTC
		}
	}
	return r
}

func (r *endpointRecord) setHost(h hostLink) {
	r.HostIfindex = uint32(h.index)
	r.HostIfName = [16]byte{}
	copy(r.HostIfName[:], h.name)
	r.HostMAC = [6]byte{}
	copy(r.HostMAC[:], h.mac)
}

func (r endpointRecord) detached() bool { return r.Flags&recordDetached != 0 }

func (r endpointRecord) attachMode() AttachMode {
	switch {
	case r.detached():
		return AttachAuto
	case r.Flags&recordAttachTC != 0:
		return AttachTC
	}
	return AttachTCX
}

func (r endpointRecord) hostIfName() string {
	n, _, _ := bytes.Cut(r.HostIfName[:], []byte{0})
	return string(n)
}

func (r endpointRecord) addrs() []netip.Addr {
	var a []netip.Addr
	if r.Flags&recordHasIPv4 != 0 {
		a = append(a, netip.AddrFrom4(r.IPv4))
	}
	if r.Flags&recordHasIPv6 != 0 {
		a = append(a, netip.AddrFrom16(r.IPv6))
	}
	return a
}

// host returns the host-side interface the record names, zero for a
// detached endpoint.
func (r endpointRecord) host() hostLink {
	if r.detached() {
		return hostLink{}
	}
	return hostLink{index: int(r.HostIfindex), name: r.hostIfName(), mac: net.HardwareAddr(r.HostMAC[:])}
}

// endpointConfig returns the configuration of the endpoint the record
// describes, validated as AddEndpoint validates its argument, so that a
// damaged record cannot produce an endpoint AddEndpoint would refuse.
// NetNS is unknown after the fact and stays empty.
func (r endpointRecord) endpointConfig(id EndpointID) (EndpointConfig, error) {
	if r.Version != recordVersion {
		return EndpointConfig{}, fmt.Errorf("endpoint %d: record format %d, this build knows %d", id, r.Version, recordVersion)
	}
	cfg := EndpointConfig{
		ID:       id,
		Identity: identity.ID(r.Identity),
		MAC:      net.HardwareAddr(r.MAC[:]),
		Detached: r.detached(),
	}
	if r.Flags&recordHasIPv4 != 0 {
		cfg.IPv4 = netip.AddrFrom4(r.IPv4)
	}
	if r.Flags&recordHasIPv6 != 0 {
		cfg.IPv6 = netip.AddrFrom16(r.IPv6)
	}
	if !cfg.Detached {
		cfg.HostIfName = r.hostIfName()
		if cfg.HostIfName == "" {
			return EndpointConfig{}, fmt.Errorf("endpoint %d: record names no host interface", id)
		}
		// withDefaults wants a namespace; any path will do for the check.
		cfg.NetNS = "-"
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return EndpointConfig{}, fmt.Errorf("endpoint %d: record: %w", id, err)
	}
	cfg.NetNS, cfg.IfName = "", ""
	return cfg, nil
}
