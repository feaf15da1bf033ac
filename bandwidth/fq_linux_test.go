package bandwidth

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// txtimeSender is a UDP socket in a namespace that sends with SO_TXTIME:
// each datagram carries its own departure time (CLOCK_MONOTONIC), which
// the fq qdisc of the device it leaves by honours, or drops when it lies
// beyond fq's horizon. It stands for the applications fq's horizon guards
// against (Cilium's FqDefaultHorizon comment: buggy SO_TXTIME users).
type txtimeSender struct{ fd int }

func newTxtimeSender(t *testing.T, ns *testutils.NetNS) *txtimeSender {
	t.Helper()
	s := &txtimeSender{fd: -1}
	if err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		s.fd = fd
		// struct sock_txtime: clockid, flags.
		var opt [8]byte
		binary.NativeEndian.PutUint32(opt[0:], uint32(unix.CLOCK_MONOTONIC))
		return unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_TXTIME, string(opt[:]))
	}); err != nil {
		t.Fatalf("SO_TXTIME socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(s.fd) })
	return s
}

// send sends one datagram to dst that may leave no earlier than ahead
// from now.
func (s *txtimeSender) send(dst netip.AddrPort, ahead time.Duration) error {
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &now); err != nil {
		return err
	}
	cmsg := make([]byte, unix.CmsgSpace(8))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&cmsg[0]))
	h.Level, h.Type = unix.SOL_SOCKET, unix.SCM_TXTIME
	h.SetLen(unix.CmsgLen(8))
	binary.NativeEndian.PutUint64(cmsg[unix.CmsgLen(0):], uint64(now.Nano()+int64(ahead)))
	sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	return unix.Sendmsg(s.fd, []byte("txtime"), cmsg, sa, 0)
}

// udpCount listens on addr in ns and counts the datagrams it receives
// until Close.
type udpCount struct {
	conn *net.UDPConn
	n    chan int
}

func listenUDP(t *testing.T, ns *testutils.NetNS, addr netip.AddrPort) *udpCount {
	t.Helper()
	var conn *net.UDPConn
	if err := ns.Do(func() (err error) {
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	c := &udpCount{conn: conn, n: make(chan int, 1)}
	go func() {
		n, buf := 0, make([]byte, 64)
		for {
			if _, _, err := conn.ReadFromUDP(buf); err != nil {
				c.n <- n
				return
			}
			n++
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return c
}

// stop waits until datagrams sent up to now have had linger to arrive and
// returns how many did.
func (c *udpCount) stop(linger time.Duration) int {
	time.Sleep(linger)
	c.conn.Close()
	return <-c.n
}

// fqDrops returns the horizon drops of fq on the Manager's one device.
func fqDrops(t *testing.T, m *Manager) DeviceStats {
	t.Helper()
	sts, err := m.DeviceStats()
	if err != nil {
		t.Fatal(err)
	}
	if len(sts) != 1 || sts[0].Qdiscs == 0 {
		t.Fatalf("device stats %+v, want one device with fq", sts)
	}
	return sts[0]
}

// appTxtimeDuring sends, from the node, datagrams with departure times
// beyond fq's horizon (5 s, fq's is 2 s) and within it (1 ms) while run
// runs: fq on the uplink must drop exactly the far ones, counted in its
// horizon_drops, and pass the near ones to the remote. It returns run's
// result.
func appTxtimeDuring(t *testing.T, w *trafficWorld, m *Manager, run func() float64) float64 {
	t.Helper()
	const n = 20
	dst := netip.AddrPortFrom(remoteAddr, 7001)
	recv := listenUDP(t, w.remote, dst)
	s := newTxtimeSender(t, w.node)
	before := fqDrops(t, m)
	errc := make(chan error, 1)
	go func() {
		time.Sleep(500 * time.Millisecond) // into the transfer
		var err error
		for i := 0; i < n && err == nil; i++ {
			err = errors.Join(s.send(dst, 5*time.Second), s.send(dst, time.Millisecond))
			time.Sleep(50 * time.Millisecond)
		}
		errc <- err
	}()
	got := run()
	if err := <-errc; err != nil {
		t.Fatalf("SO_TXTIME send: %v", err)
	}
	arrived := recv.stop(500 * time.Millisecond)
	after := fqDrops(t, m)
	drops := after.HorizonDrops - before.HorizonDrops
	t.Logf("SO_TXTIME datagrams: %d of %d within fq's horizon arrived; fq horizon_drops +%d for %d beyond it (throttled +%d, horizon_caps +%d)",
		arrived, n, drops, n, after.Throttled-before.Throttled, after.HorizonCaps-before.HorizonCaps)
	if drops != n {
		t.Errorf("fq counted %d horizon drops, want %d (the datagrams 5 s ahead)", drops, n)
	}
	if arrived != n {
		t.Errorf("%d of %d datagrams 1 ms ahead arrived", arrived, n)
	}
	return got
}

// fqHorizonBelowProgram runs a TCP stream limited to limit by EDT with
// fq's horizon (20 ms) set below the program's (2 s): fq, not the program,
// drops the stamps that run ahead, and counts them. It reports the rate
// the stream keeps; Config.FqHorizon says why it may fall short.
func fqHorizonBelowProgram(t *testing.T, w *trafficWorld, limit Rate) {
	const fqHorizon = 20 * time.Millisecond
	m, err := New(Config{NodeNetNS: nsPath(w.node), Devices: []string{"up0"}, FqHorizon: fqHorizon})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	}()
	if err := m.Set(w.a, Limits{Egress: limit}); err != nil {
		t.Fatal(err)
	}
	st, ok, err := w.a.EgressState()
	if err != nil || !ok || st.Horizon != DefaultHorizon {
		t.Fatalf("EDT state %+v, %v, %v", st, ok, err)
	}
	progBefore := programHorizonDrops(t, w)
	before := fqDrops(t, m)
	got := w.rate(t, w.podA, false)
	after := fqDrops(t, m)
	prog := programHorizonDrops(t, w) - progBefore
	drops := after.HorizonDrops - before.HorizonDrops
	t.Logf("fq horizon %v below the program's %v: %.2f Mbit/s of payload (within 5%%: %v); fq horizon_drops +%d, throttled +%d; the program's %v drops +%d",
		fqHorizon, DefaultHorizon, got/1e6, payloadWithin(got, limit), drops, after.Throttled-before.Throttled, monitor.DropEDTHorizon, prog)
	if drops == 0 {
		t.Errorf("fq with a %v horizon below the program's dropped nothing", fqHorizon)
	}
	if prog != 0 {
		t.Errorf("the program dropped %d packets at its 2 s horizon", prog)
	}
	if err := m.Clear(w.a); err != nil {
		t.Fatal(err)
	}
}

func programHorizonDrops(t *testing.T, w *trafficWorld) uint64 {
	t.Helper()
	c, err := w.d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c[datapath.CounterKey{Hook: datapath.FromEndpoint, Reason: monitor.DropEDTHorizon}].Packets
}

// TestPrivilegedFqHorizonDrops installs the Manager's fq on a device and
// sends datagrams through it with SO_TXTIME: those stamped beyond fq's
// horizon are dropped and counted in fq's horizon_drops, exactly as many
// as were sent; those within it arrive. No bulk traffic, so that it holds
// under emulation (the kernel matrix) as well.
func TestPrivilegedFqHorizonDrops(t *testing.T) {
	testutils.RequirePrivileged(t)
	testutils.SkipIfNotSupported(t, HaveEDT())
	node, peer := testutils.NewNetNS(t), testutils.NewNetNS(t)
	testutils.NewVeth(t, node, "up0", peer, "up1")
	addIP(t, node, "up0", nodeUplink, 24)
	addIP(t, peer, "up1", remoteAddr, 24)
	m, err := New(Config{NodeNetNS: nsPath(node), Devices: []string{"up0"}, FqHorizon: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if m.Mechanism() != MechanismEDT {
		t.Fatalf("mechanism %v with sch_fq present", m.Mechanism())
	}

	const n = 20
	dst := netip.AddrPortFrom(remoteAddr, 7002)
	recv := listenUDP(t, peer, dst)
	s := newTxtimeSender(t, node)
	before := fqDrops(t, m)
	for i := 0; i < n; i++ {
		// 1 s is beyond the 500 ms horizon, 1 ms within it.
		if err := errors.Join(s.send(dst, time.Second), s.send(dst, time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	arrived := recv.stop(500 * time.Millisecond)
	after := fqDrops(t, m)
	t.Logf("fq: horizon_drops +%d, throttled +%d; %d of %d datagrams within the horizon arrived",
		after.HorizonDrops-before.HorizonDrops, after.Throttled-before.Throttled, arrived, n)
	if got := after.HorizonDrops - before.HorizonDrops; got != n {
		t.Errorf("fq counted %d horizon drops, want %d", got, n)
	}
	if arrived != n {
		t.Errorf("%d of %d datagrams 1 ms ahead arrived", arrived, n)
	}
}

// TestPrivilegedManagerCloseRestores gives the Manager a device with a
// tbf of its own and a multi-queue device with the kernel's default:
// with EDT (a kernel with sch_fq) New puts fq on both, one per TX queue
// on the second, and Close puts back exactly what tc showed before. With
// the fallback (no sch_fq) New leaves the devices alone and Close
// changes nothing either.
func TestPrivilegedManagerCloseRestores(t *testing.T) {
	testutils.RequirePrivileged(t)
	ns := testutils.NewNetNS(t)
	h := ns.Netlink(t)
	testutils.NewVeth(t, ns, "v0", ns, "v1")
	multiQueueVeth(t, ns, "m0", 4)
	v0, err := h.LinkByName("v0")
	if err != nil {
		t.Fatal(err)
	}
	user := tbfQdisc(v0.Attrs().Index, 30*Mbit, Config{TBFLatency: defaultTBFLatency})
	user.Handle = netlink.MakeHandle(1, 0) // the handle the Manager gives fq
	if err := h.QdiscReplace(user); err != nil {
		t.Fatal(err)
	}
	devs := []string{"v0", "m0"}
	before := map[string]string{}
	for _, d := range devs {
		before[d] = tcShow(t, ns, d)
	}

	m, err := New(Config{NodeNetNS: nsPath(ns), Devices: devs})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mechanism %v", m.Mechanism())
	if m.Mechanism() == MechanismEDT {
		sts, err := m.DeviceStats()
		if err != nil {
			t.Fatal(err)
		}
		// One fq per TX queue; a veth has as many as the machine has
		// CPUs unless told otherwise (m0 has 4).
		if want := max(v0.Attrs().NumTxQueues, 1); len(sts) != 2 || sts[0].Qdiscs != want || sts[1].Qdiscs != 4 {
			t.Errorf("fq qdiscs per device: %+v, want %d on v0 and 4 on m0", sts, want)
		}
		for _, d := range devs {
			// tc prints fq's horizon in microseconds.
			if now := tcShow(t, ns, d); !strings.Contains(now, `"kind":"fq"`) || !strings.Contains(now, `"horizon":2000000,`) {
				t.Errorf("%s after New:\n%s", d, now)
			}
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if after := tcShow(t, ns, d); after != before[d] {
			t.Errorf("%s after Close:\n%s\nbefore New:\n%s", d, after, before[d])
		}
	}
	if _, err := m.DeviceStats(); !errors.Is(err, nodeplane.ErrClosed) {
		t.Errorf("DeviceStats after Close: %v, want ErrClosed", err)
	}
}
