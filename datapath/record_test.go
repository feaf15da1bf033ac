package datapath

import (
	"encoding/binary"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"unsafe"
)

func TestEndpointRecordLayout(t *testing.T) {
	if n := binary.Size(endpointRecord{}); n != endpointRecordSize {
		t.Fatalf("binary size %d, want %d", n, endpointRecordSize)
	}
	if n := unsafe.Sizeof(endpointRecord{}); n != endpointRecordSize {
		t.Fatalf("Go size %d, want %d: implicit padding", n, endpointRecordSize)
	}
}

func TestEndpointRecordRoundTrip(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg  EndpointConfig
		mode AttachMode
	}{
		"IPv4 tcx":      {EndpointConfig{ID: 7, Identity: 1000, IPv4: addrA, NetNS: "/x", HostIfName: "lxc7"}, AttachTCX},
		"dual-stack tc": {EndpointConfig{ID: 65535, Identity: 0xFFFFFF, IPv4: addrA, IPv6: addrA6, NetNS: "/x"}, AttachTC},
		"IPv6 only":     {EndpointConfig{ID: 1, Identity: 5, IPv6: addrB6, NetNS: "/x", MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}, AttachTCX},
		"detached":      {EndpointConfig{ID: 3, Identity: 2000, IPv4: addrB, Detached: true}, AttachTCX},
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := tc.cfg.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			rec := newEndpointRecord(cfg, tc.mode)
			got, err := rec.endpointConfig(cfg.ID)
			if err != nil {
				t.Fatal(err)
			}
			want := cfg
			want.NetNS, want.IfName = "", ""
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
			}
			wantMode := tc.mode
			if cfg.Detached {
				wantMode = AttachAuto
			}
			if rec.attachMode() != wantMode {
				t.Fatalf("attach mode %s, want %s", rec.attachMode(), wantMode)
			}
		})
	}
}

func TestEndpointRecordRejects(t *testing.T) {
	cfg, err := EndpointConfig{ID: 7, Identity: 1000, IPv4: addrA, NetNS: "/x"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	good := newEndpointRecord(cfg, AttachTCX)
	for name, tc := range map[string]struct {
		mutate func(*endpointRecord)
		want   string
	}{
		"unknown format": {func(r *endpointRecord) { r.Version = 2 }, "record format 2"},
		"no host name":   {func(r *endpointRecord) { r.HostIfName = [16]byte{} }, "no host interface"},
		"no address":     {func(r *endpointRecord) { r.Flags &^= recordHasIPv4 }, "no address"},
		"identity 0":     {func(r *endpointRecord) { r.Identity = 0 }, "identity 0"},
		"bad name":       {func(r *endpointRecord) { copy(r.HostIfName[:], "a/b") }, "not valid"},
		"multicast MAC":  {func(r *endpointRecord) { r.MAC[0] = 1 }, "not a unicast"},
	} {
		t.Run(name, func(t *testing.T) {
			r := good
			tc.mutate(&r)
			if _, err := r.endpointConfig(7); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
	if _, err := good.endpointConfig(7); err != nil {
		t.Fatal(err)
	}
	if got := good.addrs(); len(got) != 1 || got[0] != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("addrs %v", got)
	}
}
