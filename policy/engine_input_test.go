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
		ep   Endpoint
		want error
	}{
		{"identity 0, no labels", Endpoint{}, identity.ErrInvalidID},
		{"identity 0 with labels", Endpoint{Labels: web}, identity.ErrInvalidID},
		{"no labels", Endpoint{Identity: 70000}, identity.ErrNoLabels},
		{"out-of-range identity", Endpoint{Identity: 1 << 30, Labels: web}, identity.ErrInvalidID},
	} {
		m := &recordingMap{}
		if err := e.AddEndpoint(1, tc.ep, m); !errors.Is(err, tc.want) {
			t.Errorf("%s: AddEndpoint = %v, want %v", tc.name, err, tc.want)
		}
		if _, calls := m.snapshot(); len(calls) != 0 {
			t.Errorf("%s: the refused endpoint's map was written", tc.name)
		}
	}
	if err := e.AddEndpoint(1, Endpoint{Identity: 70000, Labels: web}, &recordingMap{}); err != nil {
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
