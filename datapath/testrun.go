package datapath

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
)

// Action is what a program did with a packet.
type Action uint8

// Actions.
const (
	// ActionPass hands the packet on: to the stack (from the endpoint) or
	// to the endpoint (from the stack).
	ActionPass Action = iota
	// ActionRedirect sends the packet straight into a local endpoint's
	// namespace.
	ActionRedirect
	// ActionDrop drops the packet; Verdict.Reason says why.
	ActionDrop
)

func (a Action) String() string {
	switch a {
	case ActionPass:
		return "pass"
	case ActionRedirect:
		return "redirect"
	case ActionDrop:
		return "drop"
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// ConntrackState is how conntrack classified a packet.
type ConntrackState uint8

// Conntrack states, as enum np_ct_state.
const (
	// ConntrackNew: no connection knew the packet; policy decided.
	ConntrackNew ConntrackState = 0
	// ConntrackEstablished: the packet went the way of the connection's
	// first packet.
	ConntrackEstablished ConntrackState = 1
	// ConntrackReply: the packet went the other way.
	ConntrackReply ConntrackState = 2
	// ConntrackRelated: an ICMP error about a tracked connection.
	ConntrackRelated ConntrackState = 3
)

func (s ConntrackState) String() string {
	switch s {
	case ConntrackNew:
		return "new"
	case ConntrackEstablished:
		return "established"
	case ConntrackReply:
		return "reply"
	case ConntrackRelated:
		return "related"
	}
	return fmt.Sprintf("ConntrackState(%d)", uint8(s))
}

// Verdict is what a program decided about one packet, as it leaves it in
// skb->cb (see bpf/datapath.c).
type Verdict struct {
	Action Action
	// Reason is why the packet was dropped; 0 unless Action is ActionDrop.
	Reason monitor.DropReason
	// Conntrack is the packet's conntrack state, valid once the packet was
	// parsed and its source accepted.
	Conntrack ConntrackState
	// SrcIdentity and DstIdentity as the program determined them (0 where
	// it stopped before). For packets of known connections they are the
	// identities conntrack recorded when the connection was created.
	SrcIdentity, DstIdentity identity.ID
	// RedirectIfindex is the host-side ifindex of the local endpoint the
	// packet was redirected to.
	RedirectIfindex int
	// Match, L4PrefixLen and ProxyPort describe the policy entry that
	// decided the last policy check of a new connection (MatchNone when
	// none did).
	Match       PolicyMatch
	L4PrefixLen uint8
	ProxyPort   uint16
	// Departure is the earliest departure time (CLOCK_MONOTONIC) the
	// program stamped on the packet for the endpoint's egress rate
	// ([Endpoint.SetEgressRate]); zero when it left the stamp alone.
	// Only [Endpoint.TestRun] reports it.
	Departure time.Duration
}

// skbContext is struct __sk_buff as BPF_PROG_TEST_RUN passes it in and
// out; only priority, cb and tstamp are of interest. TestMapLayouts checks it
// against BTF.
type skbContext struct {
	_        [8]uint32  `btf:"len"`
	Priority uint32     `btf:"priority"`
	_        [3]uint32  `btf:"ingress_ifindex"`
	CB       [5]uint32  `btf:"cb"`
	_        [21]uint32 `btf:"hash"`
	Tstamp   uint64     `btf:"tstamp"`
	_        [8]uint32  `btf:"wire_len"`
}

const (
	verdictValid = 1 << 24
	tcActOK      = 0
	tcActShot    = 2
	tcActRedir   = 7
)

// TestRun runs one packet, from its Ethernet header on, through the
// endpoint's program at hook with BPF_PROG_TEST_RUN and returns the verdict
// and the packet as the program left it. The packet is not delivered
// anywhere; the maps see it as they would a real one (conntrack entries
// are created, counters and events written). It needs no interface, so it
// works for detached endpoints, and it is how policy can be checked
// against the kernel without traffic. The kernel needs at least 14 bytes.
func (ep *Endpoint) TestRun(hook Hook, packet []byte) (Verdict, []byte, error) {
	ep.mu.RLock()
	defer ep.mu.RUnlock()
	prog, err := ep.program(hook)
	if err != nil {
		return Verdict{}, nil, err
	}
	var ctxOut skbContext
	opts := &ebpf.RunOptions{
		Data:       packet,
		DataOut:    make([]byte, len(packet)+256),
		Context:    skbContext{},
		ContextOut: &ctxOut,
	}
	ret, err := prog.Run(opts)
	if err != nil {
		return Verdict{}, nil, fmt.Errorf("endpoint %d: test run %s: %w", ep.cfg.ID, hook, err)
	}
	v, err := verdictFrom(ret, ctxOut.CB)
	if err != nil {
		return Verdict{}, nil, fmt.Errorf("endpoint %d: test run %s: %w", ep.cfg.ID, hook, err)
	}
	v.Departure = time.Duration(ctxOut.Tstamp)
	return v, opts.DataOut, nil
}

// program returns the endpoint's program for hook; ep.mu is held for
// reading at least.
func (ep *Endpoint) program(hook Hook) (*ebpf.Program, error) {
	if ep.deleted {
		return nil, fmt.Errorf("endpoint %d: %w", ep.cfg.ID, nodeplane.ErrClosed)
	}
	switch hook {
	case FromEndpoint:
		return ep.progs.from, nil
	case ToEndpoint:
		return ep.progs.to, nil
	}
	return nil, fmt.Errorf("endpoint %d: unknown hook %d", ep.cfg.ID, hook)
}

func verdictFrom(ret uint32, cb [5]uint32) (Verdict, error) {
	if cb[0]&verdictValid == 0 {
		return Verdict{}, fmt.Errorf("program returned %d without a verdict in skb->cb", ret)
	}
	v := Verdict{
		Reason:          monitor.DropReason(cb[0]),
		Conntrack:       ConntrackState(cb[0] >> 8),
		SrcIdentity:     identity.ID(cb[1]),
		DstIdentity:     identity.ID(cb[2]),
		RedirectIfindex: int(cb[3]),
		ProxyPort:       uint16(cb[4]),
		Match:           PolicyMatch(cb[4] >> 16),
		L4PrefixLen:     uint8(cb[4] >> 24),
	}
	switch ret {
	case tcActOK:
		v.Action = ActionPass
	case tcActShot:
		v.Action = ActionDrop
	case tcActRedir:
		v.Action = ActionRedirect
	default:
		return Verdict{}, fmt.Errorf("unexpected tc action %d", ret)
	}
	if (v.Action == ActionDrop) != (v.Reason != 0) {
		return Verdict{}, fmt.Errorf("tc action %d disagrees with drop reason %d", ret, v.Reason)
	}
	return v, nil
}
