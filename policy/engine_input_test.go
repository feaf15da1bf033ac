package policy

import (
	"errors"
	"testing"

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
