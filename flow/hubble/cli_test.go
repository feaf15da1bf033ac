package hubble

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// hubbleCLI runs the real hubble CLI (see .ci/hubble-cli) with args and
// returns its stdout; it fails the test on a non-zero exit.
func hubbleCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, stderr, err := hubbleCLIResult(t, args...)
	if err != nil {
		t.Fatalf("hubble %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, stderr)
	}
	return out
}

func hubbleCLIResult(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin := testutils.HubbleCLI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	// No user or system hubble config may change what the CLI sends.
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "HUBBLE_CONFIG="+os.DevNull)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// parseFlows reads `hubble observe -o json` output: one GetFlowsResponse
// per line, in protojson.
func parseFlows(t *testing.T, out string) []*flowpb.Flow {
	t.Helper()
	var flows []*flowpb.Flow
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var r observerpb.GetFlowsResponse
		if err := protojson.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("hubble printed a line that is not a GetFlowsResponse: %v\n%s", err, sc.Text())
		}
		if f := r.GetFlow(); f != nil {
			flows = append(flows, f)
		}
	}
	return flows
}

func flowKeys(fs []*flowpb.Flow) []uint32 {
	var keys []uint32
	for _, f := range fs {
		keys = append(keys, flowKey(f))
	}
	return keys
}

// TestHubbleCLI runs the real `hubble` v1.20.2 against the server, serving
// hand-made flows: the flows it prints and what its filter flags select.
// TestPrivilegedHubbleCLI does the same with flows from the datapath.
func TestHubbleCLI(t *testing.T) {
	testutils.HubbleCLI(t)
	fs := testFlows()
	obs := newRing(16, fs)
	_, _, addr := startServer(t, obs)
	server := "--server=" + addr

	t.Run("observe -o json", func(t *testing.T) {
		got := parseFlows(t, hubbleCLI(t, "observe", server, "-o", "json", "--last", "100"))
		if len(got) != len(fs) {
			t.Fatalf("hubble printed %d flows, want %d", len(got), len(fs))
		}
		for i := range fs {
			if want := Proto(&fs[i]); !protoEqualJSON(t, got[i], want) {
				t.Errorf("flow %d:\n got %v\nwant %v", i, got[i], want)
			}
		}
	})

	for _, tc := range []struct {
		name string
		args []string
		want []uint32
	}{
		{"--verdict DROPPED", []string{"--verdict", "DROPPED"}, []uint32{40001, 5000}},
		{"--from-label", []string{"--from-label", "k8s:app=db"}, []uint32{80, 5000}},
		{"--to-pod", []string{"--to-pod", "prod/db-0"}, []uint32{40000, 40001, 1008, 40000}},
		{"--protocol", []string{"--protocol", "udp"}, []uint32{5000}},
		{"--protocol icmp", []string{"--protocol", "icmp"}, []uint32{1008}},
		{"--last 2", []string{"--last", "2"}, []uint32{5000, 40000}},
		{"--first 1", []string{"--first", "1"}, []uint32{40000}},
		{"--not --verdict", []string{"--not", "--verdict", "FORWARDED"}, []uint32{40001, 5000}},
		{"--tcp-flags", []string{"--tcp-flags", "FIN"}, []uint32{40000}},
		{"--traffic-direction", []string{"--traffic-direction", "ingress"}, []uint32{40001}},
		{"--since", []string{"--since", t0.Add(4 * time.Second).Format(time.RFC3339Nano)}, []uint32{5000, 40000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"observe", server, "-o", "json"}, tc.args...)
			if !slices.Contains(tc.args, "--last") && !slices.Contains(tc.args, "--first") {
				args = append(args, "--all")
			}
			got := flowKeys(parseFlows(t, hubbleCLI(t, args...)))
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}

	t.Run("compact output with the default field mask", func(t *testing.T) {
		out := hubbleCLI(t, "observe", server, "--verdict", "DROPPED", "--all")
		// Hubble's compact line: time, source, arrow, destination, the
		// drop reason, verdict and summary.
		for _, want := range []string{"prod/web-0:40001", "prod/db-0:5432", "Policy denied DROPPED", "TCP Flags: SYN"} {
			if !strings.Contains(out, want) {
				t.Errorf("compact output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("status", func(t *testing.T) {
		out := hubbleCLI(t, "status", server)
		for _, want := range []string{"Healthcheck (via " + addr + "): Ok", "Current/Max Flows: 6/16", "Connected Nodes: 1/1"} {
			if !strings.Contains(out, want) {
				t.Errorf("status output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("list nodes", func(t *testing.T) {
		out := hubbleCLI(t, "list", "nodes", server)
		if !strings.Contains(out, "node-a") || !strings.Contains(out, "Connected") {
			t.Errorf("list nodes:\n%s", out)
		}
	})

	t.Run("list namespaces", func(t *testing.T) {
		out := hubbleCLI(t, "list", "namespaces", server)
		if lines := strings.Fields(out); !slices.Equal(lines, []string{"NAMESPACE", "prod"}) {
			t.Errorf("list namespaces:\n%s", out)
		}
	})

	t.Run("unsupported filter is refused", func(t *testing.T) {
		_, stderr, err := hubbleCLIResult(t, "observe", server, "--to-fqdn", "example.com")
		if err == nil || !strings.Contains(stderr, "destination_fqdn") {
			t.Errorf("observe --to-fqdn: err %v, stderr %s", err, stderr)
		}
	})
}

// protoEqualJSON compares two flows through their protojson, as the CLI
// printed them, so that both sides went through the same encoding.
func protoEqualJSON(t *testing.T, a, b *flowpb.Flow) bool {
	t.Helper()
	ja, err := protojson.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	var na, nb flowpb.Flow
	if protojson.Unmarshal(ja, &na) != nil || protojson.Unmarshal(jb, &nb) != nil {
		t.Fatal("protojson round trip")
	}
	return protojson.Format(&na) == protojson.Format(&nb)
}

// TestHubbleCLIFollow runs `hubble observe --follow --verdict DROPPED` and
// writes flows while it runs: it must print the new dropped flows and
// nothing else.
func TestHubbleCLIFollow(t *testing.T) {
	bin := testutils.HubbleCLI(t)
	obs := newRing(64, testFlows())
	_, _, addr := startServer(t, obs)

	cmd := exec.Command(bin, "observe", "--server="+addr, "-o", "json", "--follow", "--verdict", "DROPPED")
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "HUBBLE_CONFIG="+os.DevNull)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()

	// The CLI follows from the moment its call reaches the server, which
	// the test cannot see: write a forwarded and a dropped flow (source
	// ports 100+i and 200+i) every 50ms until three dropped ones arrived.
	fwd, drop := testFlows()[0], testFlows()[2]
	var got []string
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(20 * time.Second)
	for i := uint16(0); len(got) < 3; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("hubble exited; printed %v", got)
			}
			got = append(got, l)
		case <-tick.C:
			fwd.L4.SourcePort, drop.L4.SourcePort = 100+i, 200+i
			fwd.Time, drop.Time = time.Now(), time.Now()
			obs.ring.Write(&fwd)
			obs.ring.Write(&drop)
			i++
		case <-timeout:
			t.Fatalf("after 20s hubble printed %v", got)
		}
	}
	flows := parseFlows(t, strings.Join(got, "\n"))
	if len(flows) != 3 {
		t.Fatalf("%d flows in %q", len(flows), got)
	}
	first := flowKey(flows[0])
	for i, f := range flows {
		if f.GetVerdict() != flowpb.Verdict_DROPPED || flowKey(f) != first+uint32(i) || first < 200 {
			t.Errorf("followed flow %d: %v %d, want DROPPED from port %d", i, f.GetVerdict(), flowKey(f), first+uint32(i))
		}
	}
}

// TestHubbleCLIL7 serves an HTTP proxy's records to the real `hubble`: it
// prints them as flows equal to Proto's, selects them with its L7 filter
// flags, and its own rendering of the L7 record agrees with Flow.Summary.
func TestHubbleCLIL7(t *testing.T) {
	testutils.HubbleCLI(t)
	rec := func(typ flow.L7Type, v flow.Verdict, method, path string, code uint32, sport uint16) flow.Flow {
		var f flow.Flow
		flow.L7Flow(&flow.L7Record{
			Time: t0.Add(time.Duration(sport) * time.Millisecond), Verdict: v, Direction: flow.Ingress, Protocol: nodeplane.ProtoTCP,
			Source: netip.MustParseAddrPort(fmt.Sprintf("10.0.0.1:%d", sport)), Destination: netip.MustParseAddrPort("10.0.0.2:80"),
			SourceIdentity: 65792, DestinationIdentity: 65793, ProxyPort: 15001,
			L7: flow.Layer7{Type: typ, Latency: 3 * time.Millisecond, HTTP: &flow.HTTP{Code: code, Method: method,
				URL: "http://10.0.0.2" + path, Protocol: "HTTP/1.1", Headers: []flow.HTTPHeader{{Key: "X-Token", Value: "12345"}}}},
		}, "node-a", &f)
		return f
	}
	fs := []flow.Flow{
		rec(flow.L7Request, flow.Forwarded, "GET", "/public/x", 0, 40000),
		rec(flow.L7Response, flow.Forwarded, "GET", "/public/x", 200, 40000),
		rec(flow.L7Request, flow.Dropped, "POST", "/public/x", 0, 40001),
		rec(flow.L7Response, flow.Forwarded, "POST", "/public/x", 403, 40001),
	}
	_, _, addr := startServer(t, newRing(16, fs))
	server := "--server=" + addr

	got := parseFlows(t, hubbleCLI(t, "observe", server, "-o", "json", "--all"))
	if len(got) != len(fs) {
		t.Fatalf("hubble printed %d flows, want %d", len(got), len(fs))
	}
	for i := range fs {
		if want := Proto(&fs[i]); !protoEqualJSON(t, got[i], want) {
			t.Errorf("flow %d:\n got %v\nwant %v", i, got[i], want)
		}
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"--http-method", "POST"}, 2},
		{[]string{"--http-status", "4+"}, 1},
		{[]string{"--http-path", "^/public/"}, 4},
		{[]string{"--protocol", "http"}, 4},
		{[]string{"--type", "l7", "--verdict", "DROPPED"}, 1},
	} {
		out := hubbleCLI(t, append([]string{"observe", server, "-o", "json", "--all"}, tc.args...)...)
		if n := len(parseFlows(t, out)); n != tc.want {
			t.Errorf("observe %v: %d flows, want %d", tc.args, n, tc.want)
		}
	}
	// The CLI renders L7 records itself; its text must hold our summary.
	out := hubbleCLI(t, "observe", server, "--all", "-o", "compact")
	for i := range fs {
		if s := fs[i].Summary(); !strings.Contains(out, s) {
			t.Errorf("compact output lacks the summary %q:\n%s", s, out)
		}
	}
}
