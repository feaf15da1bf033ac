package policy

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

// TestEngineRefusesEndpointsWithoutIdentity: identity 0 means "any peer" in
// a policy key and an endpoint without labels is selected by no rule, so
// neither can name an endpoint; nor can an identity be announced as 0 or
// without labels.
func TestEngineRefusesEndpointsWithoutIdentity(t *testing.T) {
	e, err := NewEngine(EngineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	web, err := identity.ParseLabels("k8s:app=web")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		id   identity.ID
		want error
	}{
		{"identity 0", 0, identity.ErrInvalidID},
		{"out-of-range identity", 1 << 30, identity.ErrInvalidID},
		{"reserved world", identity.ReservedWorld, identity.ErrInvalidID},
		{"identity the engine was not told about", 70000, ErrUnknownIdentity},
	} {
		m := &recordingMap{id: tc.id}
		if err := e.AddEndpoint(m); !errors.Is(err, tc.want) {
			t.Errorf("%s: AddEndpoint = %v, want %v", tc.name, err, tc.want)
		}
		if _, calls := m.snapshot(); len(calls) != 0 {
			t.Errorf("%s: the refused endpoint's map was written", tc.name)
		}
	}
	if err := e.UpdateIdentities([]identity.Identity{{ID: 70000, Labels: web}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.AddEndpoint(&recordingMap{id: 70000}); err != nil {
		t.Fatalf("a valid endpoint: %v", err)
	}

	for _, tc := range []struct {
		name string
		id   identity.Identity
		want error
	}{
		{"identity 0, no labels", identity.Identity{}, identity.ErrInvalidID},
		{"no labels", identity.Identity{ID: 70001}, identity.ErrNoLabels},
	} {
		if err := e.UpdateIdentities([]identity.Identity{tc.id}, nil); !errors.Is(err, tc.want) {
			t.Errorf("%s: UpdateIdentities = %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestEngineCloseWithCIDRPolicy: Close releases the identities of the
// prefixes that policies still name, which wakes identity waiters, and
// must still close the engine once (it used to close a closed channel).
func TestEngineCloseWithCIDRPolicy(t *testing.T) {
	alloc, err := identity.NewInProcessAllocator(identity.InProcessConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	e, err := NewEngine(EngineConfig{CIDRAllocator: alloc})
	if err != nil {
		t.Fatal(err)
	}
	pols, err := Parse([]byte(cnp("prod", "db", `
endpointSelector: {matchLabels: {app: db}}
egress:
- toCIDRSet: [{cidr: 10.0.0.0/8}]`)), "t")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddPolicy(pols[0]); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.WaitForIdentities(context.Background(), identity.ReservedHost); !errors.Is(err, nodeplane.ErrClosed) && err != nil {
		t.Fatalf("WaitForIdentities after Close: %v", err)
	}
}

// TestEngineKeepsReservedIdentities: the reserved identities' labels are
// fixed and they are always known, so an update may neither relabel nor
// remove one.
func TestEngineKeepsReservedIdentities(t *testing.T) {
	e, err := NewEngine(EngineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	evil, err := identity.ParseLabels("k8s:app=evil")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.UpdateIdentities([]identity.Identity{{ID: identity.ReservedWorld, Labels: evil}}, nil); !errors.Is(err, identity.ErrInvalidID) {
		t.Errorf("relabel world: %v, want ErrInvalidID", err)
	}
	if err := e.UpdateIdentities(nil, []identity.ID{identity.ReservedHost}); !errors.Is(err, identity.ErrInvalidID) {
		t.Errorf("remove host: %v, want ErrInvalidID", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := e.WaitForIdentities(ctx, identity.ReservedHost, identity.ReservedWorld); err != nil {
		t.Errorf("reserved identities no longer known: %v", err)
	}
}
