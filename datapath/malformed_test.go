package datapath

import (
	"bytes"
	"net"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// TestPrivilegedMalformedFrames sends broken frames from inside an
// endpoint's namespace through a packet socket, including the ones
// BPF_PROG_TEST_RUN refuses to run (IP headers shorter than their fixed
// size), and checks each is dropped with its reason, reported and counted.
func TestPrivilegedMalformedFrames(t *testing.T) {
	d, _ := newTestDatapath(t, Config{})
	pod := testutils.NewNetNS(t)
	ep, err := d.AddEndpoint(EndpointConfig{ID: 1, Identity: idA, IPv4: addrA, IPv6: addrA6, NetNS: nsPath(pod)})
	if err != nil {
		t.Fatal(err)
	}
	events, err := d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()

	ifindex := podIfindex(t, pod, "eth0")
	for _, tc := range []struct {
		name   string
		frame  []byte
		reason monitor.DropReason
	}{
		{"truncated IPv4 header", withEtherType(0x0800, []byte{0x45, 0, 0, 20, 0, 0}), monitor.DropInvalidPacket},
		{"truncated IPv6 header", withEtherType(0x86dd, append([]byte{0x60}, make([]byte, 20)...)), monitor.DropInvalidPacket},
		{"garbage", withEtherType(0x0800, bytes.Repeat([]byte{0xa5}, 64)), monitor.DropInvalidPacket},
		{"unknown ethertype", withEtherType(0x88b5, make([]byte, 46)), monitor.DropUnknownL3},
		{"spoofed source", mustBytes(t, tcpPkt(spoofed, remote, 1, 80, TCPSyn)), monitor.DropInvalidSourceIP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := counterOf(t, d, CounterKey{FromEndpoint, tc.reason})
			copy(tc.frame[0:6], ep.HostMAC())
			copy(tc.frame[6:12], ep.MAC())
			sendFrame(t, pod, ifindex, tc.frame)

			e := waitEvent(t, events, func(e *DropEvent) bool { return bytes.Equal(e.Data, tc.frame) })
			if e.Reason != tc.reason || e.Hook != FromEndpoint || e.Endpoint != 1 || e.OrigLen != uint32(len(tc.frame)) {
				t.Fatalf("drop event %+v, want %s from endpoint 1", e, tc.reason)
			}
			if after := counterOf(t, d, CounterKey{FromEndpoint, tc.reason}); after.Packets != before.Packets+1 ||
				after.Bytes != before.Bytes+uint64(len(tc.frame)) {
				t.Fatalf("counter %+v after %+v, want one more packet of %d bytes", after, before, len(tc.frame))
			}
		})
	}
}

func podIfindex(t *testing.T, ns *testutils.NetNS, name string) int {
	t.Helper()
	l, err := ns.Netlink(t).LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

func sendFrame(t *testing.T, ns *testutils.NetNS, ifindex int, frame []byte) {
	t.Helper()
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6,
			Addr: [8]byte(append(net.HardwareAddr(nil), append(frame[0:6:6], 0, 0)...))})
	})
	if err != nil {
		t.Fatalf("send frame: %v", err)
	}
}

func counterOf(t *testing.T, d *Datapath, k CounterKey) Counter {
	t.Helper()
	cs, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return cs[k]
}
