package nodeplane_test

import (
	"context"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/internal/testutils/testmain"
)

func TestMain(m *testing.M) { testmain.Run(m) }

// TestPrivilegedComposition runs Example's code with real traffic, in a
// node namespace of its own: web reaches db on 5432, which the policy
// allows, and not on 8080, where the datapath reports a policy drop
// between the two pods' identities.
func TestPrivilegedComposition(t *testing.T) {
	testutils.RequirePrivileged(t)
	nodeNS, err := datapath.NewNetNS()
	if err != nil {
		t.Fatal(err)
	}
	defer nodeNS.Close()
	var out strings.Builder
	err = twoPods(context.Background(), nodeNS.Path(), &out)
	testutils.SkipIfNotSupported(t, err)
	if err != nil {
		t.Fatalf("%v\noutput so far:\n%s", err, out.String())
	}
	const (
		web = "k8s:app=web,k8s:io.cilium.k8s.policy.cluster=default,k8s:io.kubernetes.pod.namespace=prod"
		db  = "k8s:app=db,k8s:io.cilium.k8s.policy.cluster=default,k8s:io.kubernetes.pod.namespace=prod"
	)
	want := "prod/web -> prod/db 10.0.1.2:5432: allowed\n" +
		"prod/web -> prod/db 10.0.1.2:8080: dropped (POLICY_DENIED: " + web + " -> " + db + ")\n"
	if got := out.String(); got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
}
