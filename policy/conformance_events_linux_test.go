package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// eventLog reads the datapath's event ring buffer for the whole test and
// keeps every record by flow, so that the conformance checks can find the
// kernel's own account of each connection they made.
type eventLog struct {
	mu      sync.Mutex
	byTuple map[datapath.Tuple][]datapath.Event
	err     error // the error that ended reading, other than the close
}

func newEventLog(t *testing.T, d *datapath.Datapath) *eventLog {
	r, err := d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	l := &eventLog{byTuple: map[datapath.Tuple][]datapath.Event{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := r.Read()
			if errors.Is(err, nodeplane.ErrClosed) {
				return
			}
			l.mu.Lock()
			if err != nil {
				l.err = err
				l.mu.Unlock()
				return
			}
			var tup datapath.Tuple
			switch ev := ev.(type) {
			case *datapath.DropEvent:
				tup = ev.Tuple
			case *datapath.PolicyVerdictEvent:
				tup = ev.Tuple
			}
			l.byTuple[tup] = append(l.byTuple[tup], ev)
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		r.Close()
		<-done
	})
	return l
}

// await returns the events of tup once match accepts them, or, after
// timeout, the events seen so far and the reason match gave last.
func (l *eventLog) await(tup datapath.Tuple, timeout time.Duration, match func([]datapath.Event) error) error {
	deadline := time.Now().Add(timeout)
	for {
		l.mu.Lock()
		evs, readErr := append([]datapath.Event(nil), l.byTuple[tup]...), l.err
		l.mu.Unlock()
		err := match(evs)
		switch {
		case err == nil:
			return nil
		case readErr != nil:
			return fmt.Errorf("%w (reading events stopped: %v)", err, readErr)
		case time.Now().After(deadline):
			var seen []string
			for _, ev := range evs {
				seen = append(seen, fmt.Sprintf("%+v", ev))
			}
			return fmt.Errorf("%w; events of %v: [%s]", err, tup, strings.Join(seen, "; "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// peerIdentity is the identity the datapath gives a connection's
// destination: the pod's, or for an external address the ipcache's
// longest match (world where it has none).
func (w *conformanceWorld) peerIdentity(e expectation, dst netip.Addr) (identity.ID, error) {
	if p, ok := w.pods[e.to]; ok {
		return p.id, nil
	}
	entry, ok, err := w.d.IPCache().Lookup(dst)
	if err != nil || !ok {
		return identity.ReservedWorld, err
	}
	return entry.Identity, nil
}

// checkEvents checks the kernel's records of one connection of a truth
// table: for a denied one, a drop event of its flow with the expected
// reason and both identities; for an allowed one, an allowing
// policy-verdict event from each policy that decided it (the sender's
// egress, and for a pod the receiver's ingress), with both identities and
// the expected match type.
func (w *conformanceWorld) checkEvents(e expectation, tup datapath.Tuple) error {
	src := w.pods[e.from]
	dstID, err := w.peerIdentity(e, tup.Dst)
	if err != nil {
		return err
	}
	ids := func(s, d identity.ID) error {
		if s != src.id || d != dstID {
			return fmt.Errorf("identities %d -> %d, want %d -> %d", s, d, src.id, dstID)
		}
		return nil
	}
	if !e.allowed {
		return w.events.await(tup, 3*time.Second, func(evs []datapath.Event) error {
			for _, ev := range evs {
				if d, ok := ev.(*datapath.DropEvent); ok && d.HasTuple && d.Tuple == tup {
					if uint8(d.Reason) != e.dropReason {
						return fmt.Errorf("drop event with reason %d (%v), want %d", uint8(d.Reason), d.Reason, e.dropReason)
					}
					return ids(d.SrcIdentity, d.DstIdentity)
				}
			}
			return fmt.Errorf("no drop event with reason %d", e.dropReason)
		})
	}

	type decision struct {
		ep    datapath.EndpointID
		dir   mapstate.Direction
		match string
	}
	want := []decision{{src.ep, mapstate.Egress, e.egressMatch}}
	if dst, ok := w.pods[e.to]; ok {
		want = append(want, decision{dst.ep, mapstate.Ingress, e.ingressMatch})
	}
	return w.events.await(tup, 3*time.Second, func(evs []datapath.Event) error {
		for _, dc := range want {
			var found *datapath.PolicyVerdictEvent
			for _, ev := range evs {
				if v, ok := ev.(*datapath.PolicyVerdictEvent); ok && v.PolicyEndpoint == dc.ep && v.Direction == dc.dir {
					found = v
					break
				}
			}
			switch {
			case found == nil:
				return fmt.Errorf("no %v policy-verdict event of endpoint %d", dc.dir, dc.ep)
			case !found.Allowed():
				return fmt.Errorf("%v policy-verdict event of endpoint %d says %v", dc.dir, dc.ep, found.Reason)
			case found.Match.String() != dc.match:
				return fmt.Errorf("%v policy-verdict event of endpoint %d: match type %v, want %s", dc.dir, dc.ep, found.Match, dc.match)
			}
			if err := ids(found.SrcIdentity, found.DstIdentity); err != nil {
				return fmt.Errorf("%v policy-verdict event: %w", dc.dir, err)
			}
		}
		return nil
	})
}
