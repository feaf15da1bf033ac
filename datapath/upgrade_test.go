package datapath

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/nodeplane/nodeplane/internal/ringread"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/internal/altbuild"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// The upgrade tests' traffic, besides the TCP streams to allowedPort:
// UDP datagrams to udpAllowedPort and an ICMP echo flood, which B's policy
// allows, and TCP connection attempts to tcpDeniedPort and UDP datagrams
// to udpDeniedPort, which it denies.
const (
	udpAllowedPort = 9001
	udpDeniedPort  = 9002
	tcpDeniedPort  = 8082
)

// upgradeTraffic is how long traffic runs in each upgrade test, during
// which upgradeSwaps swaps happen at even intervals.
const (
	upgradeTraffic = 60 * time.Second
	upgradeSwaps   = 10
)

// builds are the two builds of the datapath the upgrade tests swap
// between: the embedded one (-O2) and altbuild's (-Os).
func builds(t *testing.T) [2]*ebpf.CollectionSpec {
	t.Helper()
	o2, err := loadDatapath()
	if err != nil {
		t.Fatal(err)
	}
	os, err := altbuild.LoadDatapath()
	if err != nil {
		t.Fatal(err)
	}
	return [2]*ebpf.CollectionSpec{o2, os}
}

// TestUpgradeRefusesIncompatibleBuild: an object whose maps differ from
// the embedded ones is refused before anything is loaded.
func TestUpgradeRefusesIncompatibleBuild(t *testing.T) {
	spec, err := loadDatapath()
	if err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*ebpf.CollectionSpec){
		"policy value size": func(s *ebpf.CollectionSpec) { s.Maps[datapathMapNpPolicy].InnerMap.ValueSize++ },
		"no conntrack":      func(s *ebpf.CollectionSpec) { delete(s.Maps, datapathMapNpConntrack) },
		"ipcache key size":  func(s *ebpf.CollectionSpec) { s.Maps[datapathMapNpIpcache].KeySize-- },
		"no program":        func(s *ebpf.CollectionSpec) { delete(s.Programs, datapathProgNpToEndpoint) },
		"no variable":       func(s *ebpf.CollectionSpec) { delete(s.Variables, datapathVarNpEndpointId) },
	} {
		t.Run(name, func(t *testing.T) {
			s := spec.Copy()
			change(s)
			if _, err := New(Config{Programs: s}); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("New with an object without %s: %v, want ErrInvalidConfig", name, err)
			}
		})
	}
}

// upgradeWorld is restartWorld with the upgrade tests' traffic.
type upgradeWorld struct {
	*restartWorld
	builds [2]*ebpf.CollectionSpec
	d      *Datapath
}

// udpCounter counts the datagrams a socket in B receives, by sequence
// number.
type udpCounter struct {
	mu   sync.Mutex
	seqs map[uint64]bool
	dups int
}

func (w *upgradeWorld) listenCountingUDP(t *testing.T, port uint16) *udpCounter {
	t.Helper()
	var pc net.PacketConn
	if err := w.podB.Do(func() (err error) { pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	c := &udpCounter{seqs: make(map[uint64]bool)}
	go func() {
		buf := make([]byte, 64)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 8 {
				continue
			}
			c.mu.Lock()
			seq := binary.BigEndian.Uint64(buf)
			if c.seqs[seq] {
				c.dups++
			}
			c.seqs[seq] = true
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *udpCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seqs)
}

// sendUDP sends a numbered datagram from A to B's port every millisecond
// until stop closes, and returns how many it sent.
func (w *upgradeWorld) sendUDP(t *testing.T, port uint16, stop <-chan struct{}, sent *atomic.Int64) {
	var c net.Conn
	if err := w.podA.Do(func() (err error) {
		c, err = net.Dial("udp4", netip.AddrPortFrom(addrB, port).String())
		return err
	}); err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	msg := make([]byte, 64)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for seq := uint64(0); ; seq++ {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		binary.BigEndian.PutUint64(msg, seq)
		if _, err := c.Write(msg); err != nil {
			// A connected UDP socket reports an ICMP error of an earlier
			// datagram on a later write; the datapath sends none.
			t.Errorf("UDP to port %d, datagram %d: %v", port, seq, err)
			return
		}
		sent.Add(1)
	}
}

// pingFlood sends ICMP echo requests from A to B as ping -f does: the
// next one as soon as the reply is in, or after 10 ms without it. Each
// carries a 64-bit sequence number in its payload. It returns how many it
// sent and which went unanswered, after waiting a second for late replies.
func (w *upgradeWorld) pingFlood(t *testing.T, stop <-chan struct{}) (sent uint64, lost []uint64) {
	var pc net.PacketConn
	if err := w.podA.Do(func() (err error) { pc, err = net.ListenPacket("ip4:icmp", ""); return err }); err != nil {
		t.Error(err)
		return 0, nil
	}
	defer pc.Close()
	const id = 0x5eed
	replies := make(chan uint64, 1024)
	var (
		mu       sync.Mutex
		answered = make(map[uint64]int)
	)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n >= 16 && buf[0] == 0 && binary.BigEndian.Uint16(buf[4:]) == id {
				seq := binary.BigEndian.Uint64(buf[8:])
				mu.Lock()
				answered[seq]++
				mu.Unlock()
				select {
				case replies <- seq:
				default:
				}
			}
		}
	}()
	req := make([]byte, 64)
	dst := &net.IPAddr{IP: addrB.AsSlice()}
loop:
	for ; ; sent++ {
		select {
		case <-stop:
			break loop
		default:
		}
		clear(req)
		req[0] = 8
		binary.BigEndian.PutUint16(req[4:], id)
		binary.BigEndian.PutUint16(req[6:], uint16(sent))
		binary.BigEndian.PutUint64(req[8:], sent)
		binary.BigEndian.PutUint16(req[2:], ^checksum(0, req))
		if _, err := pc.WriteTo(req, dst); err != nil {
			t.Errorf("ping %d: %v", sent, err)
			break
		}
		timeout := time.After(10 * time.Millisecond)
	wait:
		for {
			select {
			case seq := <-replies:
				if seq == sent {
					break wait
				}
			case <-timeout:
				break wait
			}
		}
	}
	time.Sleep(time.Second)
	mu.Lock()
	defer mu.Unlock()
	for seq := range sent {
		if answered[seq] != 1 {
			lost = append(lost, seq)
		}
	}
	return sent, lost
}

// denyProbe tries to connect from A to B's tcpDeniedPort again and again
// (a SYN and its retransmissions, 200 ms per attempt) until stop closes;
// it counts the attempts and any that connected.
func (w *upgradeWorld) denyProbe(stop <-chan struct{}, attempts, connected *atomic.Int64) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		c, err := dial(w.podA, "tcp4", netip.AddrPortFrom(addrB, tcpDeniedPort).String(), 200*time.Millisecond)
		attempts.Add(1)
		if err == nil {
			connected.Add(1)
			c.Close()
		}
	}
}

// countingListener accepts TCP connections in B on port and counts them.
func (w *upgradeWorld) countingListener(t *testing.T, port uint16) *atomic.Int64 {
	t.Helper()
	var ln net.Listener
	if err := w.podB.Do(func() (err error) { ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return &n
}

// dropWatch reads the drop events from the pinned ring buffer, so that a
// drop for a reason other than POLICY_DENIED can be told apart: one of the
// test's flows, or the pods' own background traffic (IPv6 neighbour and
// router solicitations from link-local addresses, which the datapath drops
// as it must).
type dropWatch struct {
	r    *EventReader
	done chan struct{}
	// ours are drops of packets between A's and B's addresses; other, the
	// rest; both without POLICY_DENIED.
	ours, other []string
	denied      int
	// deniedAllowed are POLICY_DENIED drops of packets between A and B
	// that are not the denied flows' (A to B's denied TCP and UDP ports):
	// a reply or segment of an allowed flow, which lost its conntrack
	// entry or its policy entry, would be counted here rather than hidden
	// in the denied flows' count.
	deniedAllowed []string
}

func (w *upgradeWorld) watchDrops(t *testing.T) *dropWatch {
	t.Helper()
	rb, err := ringread.New(loadPinned(t, w.bpffs, datapathMapNpEvents))
	if err != nil {
		t.Fatal(err)
	}
	dw := &dropWatch{r: &EventReader{r: rb}, done: make(chan struct{})}
	t.Cleanup(func() { dw.r.Close() })
	// What is in the ring buffer already happened before the count starts.
	dw.r.SetDeadline(time.Now().Add(100 * time.Millisecond))
	for {
		if _, err := dw.r.Read(); errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
	}
	dw.r.SetDeadline(time.Time{})
	go func() {
		defer close(dw.done)
		for {
			ev, err := dw.r.Read()
			if errors.Is(err, nodeplane.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			if err != nil {
				dw.other = append(dw.other, err.Error())
				continue
			}
			d, ok := ev.(*DropEvent)
			switch {
			case !ok:
			case d.Reason == monitor.DropPolicyDenied:
				dw.denied++
				if d.HasTuple && slices.Contains([]netip.Addr{addrA, addrB, addrA6, addrB6}, d.Tuple.Src) &&
					slices.Contains([]netip.Addr{addrA, addrB, addrA6, addrB6}, d.Tuple.Dst) && !(d.Tuple.Src == addrA && d.Tuple.Dst == addrB &&
					(d.Tuple.Proto == nodeplane.ProtoTCP && d.Tuple.DstPort == tcpDeniedPort ||
						d.Tuple.Proto == nodeplane.ProtoUDP && d.Tuple.DstPort == udpDeniedPort)) {
					dw.deniedAllowed = append(dw.deniedAllowed, d.Tuple.String())
				}
			case d.HasTuple && slices.Contains([]netip.Addr{addrA, addrB, addrA6, addrB6}, d.Tuple.Src) &&
				slices.Contains([]netip.Addr{addrA, addrB, addrA6, addrB6}, d.Tuple.Dst):
				dw.ours = append(dw.ours, fmt.Sprintf("%v %v", d.Reason, d.Tuple))
			case d.HasTuple:
				dw.other = append(dw.other, fmt.Sprintf("%v %v", d.Reason, d.Tuple))
			default:
				dw.other = append(dw.other, d.Reason.String())
			}
		}
	}()
	return dw
}

// stop reads what is left in the ring buffer and stops.
func (dw *dropWatch) stop() {
	dw.r.SetDeadline(time.Now().Add(500 * time.Millisecond))
	<-dw.done
}

// drops reads the datapath's drop counters, all hooks, by reason, from
// the pinned map: the kernel's count, whichever Datapath holds it.
func (w *upgradeWorld) drops(t *testing.T) map[monitor.DropReason]uint64 {
	t.Helper()
	m := loadPinned(t, w.bpffs, datapathMapNpCounters)
	out := make(map[monitor.DropReason]uint64)
	var (
		k      uint32
		percpu []counter
	)
	it := m.Iterate()
	for it.Next(&k, &percpu) {
		if r := monitor.DropReason(k); r != 0 {
			for _, c := range percpu {
				out[r] += c.Packets
			}
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// eventsLost reads how many events the datapath could not write to the
// ring buffer.
func (w *upgradeWorld) eventsLost(t *testing.T) uint64 {
	t.Helper()
	var percpu []uint64
	if err := loadPinned(t, w.bpffs, datapathMapNpEventsLost).Lookup(uint32(0), &percpu); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, v := range percpu {
		n += v
	}
	return n
}

// tcpSocketDrops are the TcpExt counters of segments a TCP stack dropped
// after the network delivered them: past a busy socket's backlog, for
// receive or out-of-order queue memory, into a zero window, or by pruning
// a queue under memory pressure (/proc/net/netstat).
var tcpSocketDrops = []string{"TcpExt:TCPBacklogDrop", "TcpExt:TCPRcvQDrop", "TcpExt:TCPOFODrop",
	"TcpExt:TCPZeroWindowDrop", "TcpExt:RcvPruned", "TcpExt:OfoPruned"}

func counterDeltas(names []string, delta func(string) uint64) string {
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", strings.TrimPrefix(n, "TcpExt:"), delta(n))
	}
	return b.String()
}

// devDrops sums the receive and transmit drops of a namespace's
// interfaces (/proc/net/dev).
func devDrops(t *testing.T, ns *testutils.NetNS) [2]uint64 {
	t.Helper()
	var d [2]uint64
	err := ns.Do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/dev")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n")[2:] {
			_, rest, ok := strings.Cut(line, ":")
			f := strings.Fields(rest)
			if !ok || len(f) < 12 {
				continue
			}
			rx, _ := strconv.ParseUint(f[3], 10, 64)
			tx, _ := strconv.ParseUint(f[11], 10, 64)
			d[0] += rx
			d[1] += tx
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// tcpStats reads a namespace's TCP counters from /proc/net/snmp and
// /proc/net/netstat, as seen from a thread inside it.
func tcpStats(t *testing.T, ns *testutils.NetNS) map[string]uint64 {
	t.Helper()
	out := make(map[string]uint64)
	err := ns.Do(func() error {
		for _, f := range []string{"/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"} {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			var names []string
			sc := bufio.NewScanner(strings.NewReader(string(b)))
			for sc.Scan() {
				fields := strings.Fields(sc.Text())
				if len(fields) < 2 || (fields[0] != "Tcp:" && fields[0] != "TcpExt:" && fields[0] != "Udp:") {
					continue
				}
				if _, err := strconv.ParseInt(fields[1], 10, 64); err != nil {
					names = fields
					continue
				}
				for i, v := range fields[1:] {
					n, _ := strconv.ParseUint(v, 10, 64)
					if i+1 < len(names) {
						out[fields[0]+names[i+1]] = n
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// softnetDrops sums the packets the kernel dropped because a CPU's input
// backlog was full (/proc/net/softnet_stat, second column), host-wide: a
// loss outside the datapath, on a machine too busy to take packets in.
func softnetDrops(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 16, 32)
		if err != nil {
			t.Fatal(err)
		}
		n += v
	}
	return n
}

// tags returns the tags of the programs attached to the host side of an
// endpoint, ingress then egress.
func (w *upgradeWorld) tags(t *testing.T, ifindex int) []string {
	t.Helper()
	var tags []string
	for _, id := range w.programs(t, ifindex) {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		tags = append(tags, info.Tag)
	}
	return tags
}

// TestPrivilegedUpgradeUnderTraffic swaps the datapath between two builds
// of its object (the embedded -O2 one and altbuild's -Os one) ten times in
// a minute of traffic between pods A and B, and counts every packet: four
// TCP streams of numbered messages, numbered UDP datagrams, an ICMP echo
// flood, and two denied flows that keep trying (TCP connection attempts
// and UDP datagrams to ports B's policy denies). Live swaps with
// Datapath.Upgrade; restarts, a pinning Datapath closed and a new one
// opened on the other build, which adopts the endpoints; and crashes, an
// agent process killed and a new one started on the other build, which
// adopts them. Every allowed
// packet must arrive, every denied one must be dropped with a counted
// POLICY_DENIED, no stream may break, and the datapath may drop nothing
// for another reason.
func TestPrivilegedUpgradeUnderTraffic(t *testing.T) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		for _, kind := range []swapKind{swapUpgrade, swapRestart, swapCrash} {
			t.Run(mode.String()+"/"+kind.String(), func(t *testing.T) {
				w := &upgradeWorld{restartWorld: newRestartWorld(t, mode), builds: builds(t)}
				w.run(t, kind)
			})
		}
	}
}

// swapKind is how the upgrade test changes the build.
type swapKind int

const (
	// swapUpgrade calls Datapath.Upgrade.
	swapUpgrade swapKind = iota
	// swapRestart closes the pinning Datapath and opens one on the other
	// build, which adopts the endpoints.
	swapRestart
	// swapCrash kills an agent process (SIGKILL) and starts another on the
	// other build, which adopts the endpoints.
	swapCrash
)

func (k swapKind) String() string { return [...]string{"Upgrade", "Restart", "Crash"}[k] }

func (w *upgradeWorld) run(t *testing.T, kind swapKind) {
	cfg := w.config()
	cfg.Programs = w.builds[0]
	w.d = openPinned(t, cfg)
	a, b, err := installPods(w.d, nsPath(w.podA), nsPath(w.podB))
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, b.Policy(), map[mapstate.Key]mapstate.Entry{
		{Identity: idA, Direction: mapstate.Ingress, Protocol: protoUDP, Port: udpAllowedPort, PortPrefixLen: 16}: allow,
		{Identity: idA, Direction: mapstate.Ingress, Protocol: protoICMP, Port: 8, PortPrefixLen: 16}:             allow,
	})
	aIf, bIf := a.HostIfindex(), b.HostIfindex()
	udpAllowed := w.listenCountingUDP(t, udpAllowedPort)
	udpDenied := w.listenCountingUDP(t, udpDeniedPort)
	tcpDeniedAccepted := w.countingListener(t, tcpDeniedPort)

	var streams []*stream
	for range 4 {
		s := startStream(t, w.podA, netip.AddrPortFrom(addrB, allowedPort))
		s.flowing(t)
		streams = append(streams, s)
	}
	// tags[k] are the tags of build k's programs on A and on B.
	var tags [2][2][]string
	tags[0] = [2][]string{w.tags(t, aIf), w.tags(t, bIf)}
	dw := w.watchDrops(t)
	drops0 := w.drops(t)
	lost0 := w.eventsLost(t)
	tcpA0, tcpB0 := tcpStats(t, w.podA), tcpStats(t, w.podB)
	backlog0 := softnetDrops(t)

	stop := make(chan struct{})
	var (
		wg                        sync.WaitGroup
		udpSent, udpDeniedSent    atomic.Int64
		denyAttempts, denyConnect atomic.Int64
		pingSent                  uint64
		pingLost                  []uint64
	)
	wg.Go(func() { w.sendUDP(t, udpAllowedPort, stop, &udpSent) })
	wg.Go(func() { w.sendUDP(t, udpDeniedPort, stop, &udpDeniedSent) })
	wg.Go(func() { w.denyProbe(stop, &denyAttempts, &denyConnect) })
	wg.Go(func() { pingSent, pingLost = w.pingFlood(t, stop) })

	start := time.Now()
	// The swaps start early and leave the last interval's end for a
	// slow last swap: a swap takes 0.5-8 s on a loaded machine.
	interval := upgradeTraffic * 9 / 10 / upgradeSwaps
	var (
		swapTimes []time.Duration
		lastSwap  time.Duration
		agent     *exec.Cmd
	)
	for i := range upgradeSwaps {
		time.Sleep(time.Until(start.Add(interval/4 + time.Duration(i)*interval)))
		next := w.builds[(i+1)%2]
		swapStart := time.Now()
		switch kind {
		case swapCrash:
			if i == 0 {
				// From here on agent processes own the endpoints.
				if err := w.d.Close(); err != nil {
					t.Fatalf("swap %d: close: %v", i+1, err)
				}
			} else {
				if err := agent.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				_ = agent.Wait()
			}
			agent = w.startAgentWith(t, agentArgs{Adopt: true, AltBuild: (i+1)%2 == 1})
		case swapRestart:
			if err := w.d.Close(); err != nil {
				t.Fatalf("swap %d: close: %v", i+1, err)
			}
			cfg := w.config()
			cfg.Programs = next
			w.d = openPinned(t, cfg)
			rep := w.d.Restored()
			if !slices.Equal(rep.Adopted, []EndpointID{1, 2}) || len(rep.Removed) != 0 || len(rep.Repaired) != 0 {
				t.Fatalf("swap %d: restore report %+v, want endpoints 1 and 2 adopted as they were", i+1, rep)
			}
		default:
			if err := w.d.Upgrade(next); err != nil {
				t.Fatalf("swap %d: %v", i+1, err)
			}
		}
		swapTimes = append(swapTimes, time.Since(swapStart).Round(time.Millisecond))
		lastSwap = time.Since(start)
		// The other build runs now: the kernel reports other programs on
		// both endpoints, with other tags than the previous build's and,
		// from the second swap on, the tags this build had before.
		got := [2][]string{w.tags(t, aIf), w.tags(t, bIf)}
		k := (i + 1) % 2
		switch {
		case len(got[0]) != 2 || len(got[1]) != 2:
			t.Fatalf("swap %d: programs attached: %v", i+1, got)
		case slices.Equal(got[0], tags[1-k][0]) || slices.Equal(got[1], tags[1-k][1]):
			t.Fatalf("swap %d: program tags %v, as before the swap: the build did not change", i+1, got)
		case tags[k][0] == nil:
			tags[k] = got
		case !slices.Equal(got[0], tags[k][0]) || !slices.Equal(got[1], tags[k][1]):
			t.Fatalf("swap %d: program tags %v, want %v (this build's)", i+1, got, tags[k])
		}
	}
	if lastSwap > upgradeTraffic {
		t.Errorf("the swaps took %v, longer than the %v of traffic", lastSwap, upgradeTraffic)
	}
	time.Sleep(time.Until(start.Add(upgradeTraffic)))
	close(stop)
	traffic := time.Since(start)
	wg.Wait()
	for _, s := range streams {
		s.flowing(t)
	}
	var echoed int64
	for _, s := range streams {
		s.close(t)
		echoed += s.echoed.Load()
	}

	drops1 := w.drops(t)
	dw.stop()
	eventsLost := w.eventsLost(t) - lost0
	tcpA1, tcpB1 := tcpStats(t, w.podA), tcpStats(t, w.podB)
	var otherDrops uint64
	for r, n := range drops1 {
		if r != monitor.DropPolicyDenied {
			otherDrops += n - drops0[r]
		}
	}
	policyDrops := drops1[monitor.DropPolicyDenied] - drops0[monitor.DropPolicyDenied]
	delta := func(name string) uint64 { return tcpA1[name] - tcpA0[name] + tcpB1[name] - tcpB0[name] }
	// A retransmission whose original arrived is reported back by the
	// receiver as a D-SACK: it was spurious (a timer that fired on a busy
	// machine), not a lost segment.
	retrans, dsacks := delta("Tcp:RetransSegs"), delta("TcpExt:TCPDSACKRecv")
	// Segments the pods' own TCP stacks dropped, not the datapath: a
	// socket whose owner is busy (a starved test goroutine under -race)
	// drops past its backlog or receive memory, and its peer retransmits.
	var sockDrops uint64
	for _, name := range tcpSocketDrops {
		sockDrops += delta(name)
	}
	backlogDrops := softnetDrops(t) - backlog0
	rcvbufErrs := tcpB1["Udp:RcvbufErrors"] - tcpB0["Udp:RcvbufErrors"]
	udpLost := udpSent.Load() - int64(udpAllowed.count())

	t.Logf("%d swaps in %v of traffic, the last done at %v; each took %v",
		upgradeSwaps, traffic.Round(time.Millisecond), lastSwap.Round(time.Millisecond), swapTimes)
	t.Logf("TCP: 4 streams, %d messages echoed, %d retransmitted segments (%d loss probes, %d timeouts, %d fast retransmits), %d proved spurious by D-SACK, %d spurious timeouts; %d packets dropped by the host's input backlogs (softnet_stat, all namespaces)",
		echoed, retrans, delta("TcpExt:TCPLossProbes"), delta("TcpExt:TCPTimeouts"), delta("TcpExt:TCPFastRetrans"),
		dsacks, delta("TcpExt:TCPSpuriousRTOs"), backlogDrops)
	t.Logf("TCP segments dropped by the pods' sockets: %d (%s)", sockDrops, counterDeltas(tcpSocketDrops, delta))
	t.Logf("interface drops in the pods (rx, tx): A %v, B %v", devDrops(t, w.podA), devDrops(t, w.podB))
	t.Logf("UDP allowed: %d sent, %d received, %d lost (%d receive buffer errors in B)", udpSent.Load(), udpAllowed.count(), udpLost, rcvbufErrs)
	t.Logf("ICMP echo: %d sent, %d unanswered", pingSent, len(pingLost))
	t.Logf("denied: %d TCP attempts (%d connected, %d accepted by B), %d UDP datagrams (%d received by B); %d POLICY_DENIED drops",
		denyAttempts.Load(), denyConnect.Load(), tcpDeniedAccepted.Load(), udpDeniedSent.Load(), udpDenied.count(), policyDrops)
	t.Logf("other drops by the datapath: %d counted; events: %d of the test's flows %v, %d of other traffic (first: %v); %d events lost",
		otherDrops, len(dw.ours), dw.ours, len(dw.other), dw.other[:min(len(dw.other), 4)], eventsLost)

	if udpLost != 0 || udpAllowed.dups != 0 {
		t.Errorf("allowed UDP: %d of %d datagrams lost, %d duplicated", udpLost, udpSent.Load(), udpAllowed.dups)
	}
	if len(pingLost) != 0 {
		t.Errorf("ICMP echo: %d of %d unanswered or answered twice (first: %v)", len(pingLost), pingSent, pingLost[:min(len(pingLost), 10)])
	}
	if len(dw.ours) != 0 {
		t.Errorf("the datapath dropped allowed traffic: %v", dw.ours)
	}
	if len(dw.deniedAllowed) != 0 {
		t.Errorf("POLICY_DENIED drops of packets outside the denied flows: %d (first: %v)", len(dw.deniedAllowed), dw.deniedAllowed[:min(len(dw.deniedAllowed), 4)])
	}
	// Every drop counted for another reason is accounted for by an event
	// (the watch starts a moment before the count, so it may see more),
	// and none is hidden in lost events.
	if eventsLost != 0 && otherDrops != 0 || otherDrops > uint64(len(dw.other)+len(dw.ours)) {
		t.Errorf("%d drops for reasons other than POLICY_DENIED counted, %d seen as events (%d events lost): some unattributed",
			otherDrops, len(dw.other)+len(dw.ours), eventsLost)
	}
	if n := denyConnect.Load() + tcpDeniedAccepted.Load(); n != 0 {
		t.Errorf("denied TCP port: %d connections got through", n)
	}
	if n := udpDenied.count(); n != 0 {
		t.Errorf("denied UDP port: %d datagrams got through", n)
	}
	if policyDrops < uint64(udpDeniedSent.Load()+denyAttempts.Load()) {
		t.Errorf("POLICY_DENIED drops %d, fewer than the %d denied datagrams and %d denied SYNs sent: denied packets went uncounted",
			policyDrops, udpDeniedSent.Load(), denyAttempts.Load())
	}
	if retrans > dsacks+sockDrops {
		t.Errorf("TCP retransmitted %d segments during the swaps, %d of them spurious, %d dropped by the receiving sockets: allowed segments were lost",
			retrans, dsacks, sockDrops)
	}
	if udpSent.Load() < int64(upgradeTraffic/time.Millisecond)/4 || pingSent < 1000 || denyAttempts.Load() < 10 {
		t.Errorf("too little traffic to count: %d UDP, %d pings, %d denied attempts", udpSent.Load(), pingSent, denyAttempts.Load())
	}
}
