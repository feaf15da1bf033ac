package main

import (
	"path/filepath"
	"testing"

	"github.com/nodeplane/nodeplane/bandwidth"
	"github.com/nodeplane/nodeplane/internal/statefile"
)

// TestStateBandwidthFields: a state file written before the agent kept
// bandwidth limits loads, with no limits; one written now keeps them.
func TestStateBandwidthFields(t *testing.T) {
	f, err := statefile.New(filepath.Join(t.TempDir(), "endpoints.state"), stateFormat)
	if err != nil {
		t.Fatal(err)
	}
	// The previous format's record, as that agent wrote it.
	old := `[{"containerID":"c1","ifName":"eth0","netns":"/run/netns/a","namespace":"prod","pod":"web",
	  "endpointID":1,"identity":65792,"hostIfName":"lxc1","addrs":["10.201.0.1/32"],"labels":{"app":"web"}}]`
	if _, err := f.Save([]byte(old)); err != nil {
		t.Fatal(err)
	}
	recs, err := loadRecords(f)
	if err != nil || len(recs) != 1 || recs[0].EndpointID != 1 || recs[0].Labels["app"] != "web" {
		t.Fatalf("old state: %+v, %v", recs, err)
	}
	if l := recs[0].limits(); !l.Unlimited() {
		t.Errorf("old state has limits %+v", l)
	}

	a := &Agent{state: f, eps: map[attachmentKey]*endpoint{}}
	rec := recs[0]
	rec.EgressRate, rec.IngressRate = uint64(50*bandwidth.Mbit), uint64(10*bandwidth.Mbit)
	a.eps[rec.key()] = &endpoint{rec: rec}
	if err := a.saveLocked(); err != nil {
		t.Fatal(err)
	}
	recs, err = loadRecords(f)
	if err != nil || len(recs) != 1 {
		t.Fatalf("new state: %+v, %v", recs, err)
	}
	if l := recs[0].limits(); l.Egress != 50*bandwidth.Mbit || l.Ingress != 10*bandwidth.Mbit {
		t.Errorf("limits after save and load: %+v", l)
	}
}
