package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/internal/netnsutil"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// TestPrivilegedInterfaceRemovedUnderDatapath deletes pod A's host-side
// interface behind a running Datapath's back, as a container runtime that
// tears down a pod first does: B keeps serving under its policy, A's
// Delete succeeds and removes A's state (addresses, policy map, pins),
// and a new endpoint with A's ID and addresses can be added and works.
func TestPrivilegedInterfaceRemovedUnderDatapath(t *testing.T) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		t.Run(mode.String(), func(t *testing.T) {
			w := newRestartWorld(t, mode)
			d := openPinned(t, w.config())
			a, _, err := installPods(d, nsPath(w.podA), nsPath(w.podB))
			if err != nil {
				t.Fatal(err)
			}
			w.expectSoon(t)

			nl := w.node.Netlink(t)
			l, err := nl.LinkByName(a.HostIfName())
			if err != nil {
				t.Fatal(err)
			}
			if err := nl.LinkDel(l); err != nil {
				t.Fatal(err)
			}
			if _, err := dial(w.podA, "tcp", netip.AddrPortFrom(addrB, allowedPort).String(), 300*time.Millisecond); err == nil {
				t.Fatal("A reached B without its interface")
			}

			if err := a.Delete(); err != nil {
				t.Fatalf("Delete of an endpoint whose interface is gone: %v", err)
			}
			var info endpointInfo
			if err := d.maps.endpoints.Lookup(endpointKeyFor(addrA), &info); !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatalf("A's address after Delete: %+v, %v", info, err)
			}
			var inner *ebpf.Map
			if err := d.maps.policy.Lookup(uint32(1), &inner); !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatalf("A's policy map after Delete: %v", err)
			}

			a2, err := d.AddEndpoint(EndpointConfig{ID: 1, Identity: idA, IPv4: addrA, IPv6: addrA6, NetNS: nsPath(w.podA)})
			if err != nil {
				t.Fatalf("re-adding A: %v", err)
			}
			if err := a2.Policy().Update(mapstate.Key{Identity: idB, Direction: mapstate.Egress}, allow); err != nil {
				t.Fatal(err)
			}
			w.expectSoon(t)
			w.expect(t, deniedPort, false)
		})
	}
}

// expectSoon waits up to 10 s for A to reach B's allowedPort over IPv4
// and IPv6 (a new endpoint's IPv6 address is usable once the kernel's
// duplicate address detection is done), then checks it with expect.
func (w *restartWorld) expectSoon(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, dst := range []netip.Addr{addrB, addrB6} {
		for {
			c, err := dial(w.podA, "tcp", netip.AddrPortFrom(dst, allowedPort).String(), 500*time.Millisecond)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("A -> %v:%d: %v", dst, allowedPort, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	w.expect(t, allowedPort, true)
}

// TestPrivilegedPodNetNSRemovedUnderDatapath removes a pod's network
// namespace (its last reference closed, as when a sandbox dies) under a
// running Datapath: the kernel deletes the veth pair with it, the other
// pod keeps its policy, the endpoint's Delete succeeds and leaves no
// state, and its ID and addresses can be used again.
func TestPrivilegedPodNetNSRemovedUnderDatapath(t *testing.T) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		t.Run(mode.String(), func(t *testing.T) {
			w := newRestartWorld(t, mode)
			d := openPinned(t, w.config())
			pod, err := netnsutil.New()
			if err != nil {
				t.Fatal(err)
			}
			a, err := d.AddEndpoint(EndpointConfig{ID: 3, Identity: idA, IPv4: addrA, NetNS: fmt.Sprintf("/proc/self/fd/%d", int(pod))})
			if err != nil {
				pod.Close()
				t.Fatal(err)
			}
			if err := installPodB(d, nsPath(w.podB)); err != nil {
				t.Fatal(err)
			}
			hostIf := a.HostIfName()
			if err := pod.Close(); err != nil {
				t.Fatal(err)
			}
			nl := w.node.Netlink(t)
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, err := nl.LinkByName(hostIf); err != nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s still exists 10s after its pod's namespace was closed: something holds the namespace", hostIf)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err := a.Delete(); err != nil {
				t.Fatalf("Delete of an endpoint whose namespace is gone: %v", err)
			}
			var info endpointInfo
			if err := d.maps.endpoints.Lookup(endpointKeyFor(addrA), &info); !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatalf("the address after Delete: %+v, %v", info, err)
			}
			a2, err := d.AddEndpoint(EndpointConfig{ID: 3, Identity: idA, IPv4: addrA, NetNS: nsPath(w.podA)})
			if err != nil {
				t.Fatalf("re-adding the endpoint in another namespace: %v", err)
			}
			if err := a2.Policy().Update(mapstate.Key{Identity: idB, Direction: mapstate.Egress}, allow); err != nil {
				t.Fatal(err)
			}
			c, err := dial(w.podA, "tcp4", netip.AddrPortFrom(addrB, allowedPort).String(), 2*time.Second)
			if err != nil {
				t.Fatalf("the re-added endpoint to B: %v", err)
			}
			if err := echo(c, "after the namespace was gone"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// installPodB adds only endpoint B (ID 2) with its policy: A may reach
// allowedPort.
func installPodB(d *Datapath, podB string) error {
	b, err := d.AddEndpoint(EndpointConfig{ID: 2, Identity: idB, IPv4: addrB, IPv6: addrB6, NetNS: podB})
	if err != nil {
		return err
	}
	return b.Policy().Update(allowedKey, allow)
}
