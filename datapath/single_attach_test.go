package datapath

import (
	"errors"
	"net/netip"
	"testing"
)

// TestPrivilegedOneOverlayOneMasquerade: the datapath has one overlay and
// one NAT configuration, so a second Overlay or Masquerade is refused
// while the first is attached (closing either would otherwise switch off
// the other's), and is accepted again once the first is closed.
func TestPrivilegedOneOverlayOneMasquerade(t *testing.T) {
	d, _ := newTestDatapath(t, Config{})
	const lo = 1 // the loopback interface of the test's node namespace
	cfg := MasqueradeConfig{Ifindex: lo, Address: netip.MustParseAddr("192.0.2.1")}

	m, err := d.AttachMasquerade(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if m2, err := d.AttachMasquerade(cfg); !errors.Is(err, ErrInvalidConfig) {
		if m2 != nil {
			m2.Close()
		}
		t.Fatalf("second AttachMasquerade: %v, want ErrInvalidConfig", err)
	}
	o, err := d.AttachOverlay(lo)
	if err != nil {
		t.Fatal(err)
	}
	if o2, err := d.AttachOverlay(lo); !errors.Is(err, ErrInvalidConfig) {
		if o2 != nil {
			o2.Close()
		}
		t.Fatalf("second AttachOverlay: %v, want ErrInvalidConfig", err)
	}

	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	m, err = d.AttachMasquerade(cfg)
	if err != nil {
		t.Fatalf("AttachMasquerade after Close: %v", err)
	}
	o, err = d.AttachOverlay(lo)
	if err != nil {
		t.Fatalf("AttachOverlay after Close: %v", err)
	}
	if err := errors.Join(m.Close(), o.Close()); err != nil {
		t.Fatal(err)
	}
}

// TestPrivilegedOverlayCloseAfterDatapath: an Overlay or Masquerade closed
// after its Datapath (unpinned: the Datapath's maps are gone) is not an
// error and does not panic, as their Close docs say.
func TestPrivilegedOverlayCloseAfterDatapath(t *testing.T) {
	d, _ := newTestDatapath(t, Config{})
	const lo = 1
	o, err := d.AttachOverlay(lo)
	if err != nil {
		t.Fatal(err)
	}
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: lo, Address: netip.MustParseAddr("192.0.2.1")})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Errorf("Overlay.Close after Datapath.Close: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("Masquerade.Close after Datapath.Close: %v", err)
	}
}
