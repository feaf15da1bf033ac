package main

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

const dnsPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-dns, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*.example.test"}]}
  - toFQDNs: [{matchPattern: "*.example.test"}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`

// TestPrivilegedAgentDNSPolicy runs the agent with its DNS proxy and a
// policy with DNS rules and toFQDNs from its manifests: the web pod
// reaches an address outside the cluster only after resolving a matching
// name through the proxy, another name is refused, and the queries are L7
// flows with the pods' names.
func TestPrivilegedAgentDNSPolicy(t *testing.T) {
	n := newTestNode(t)
	// The node's address (the proxy's upstream source) and a server
	// outside the cluster.
	ext := netip.MustParseAddr("192.0.2.10")
	n.addLoopbackAddrs(t, netip.MustParseAddr("10.201.1.254"), ext)
	testutils.ServeEcho(t, n.nodeNS, "tcp", netip.AddrPortFrom(ext, 8080).String())
	n.writeManifest(t, "web.yaml", dnsPolicy)
	cfg := n.config(t)
	cfg.DNSProxyPort = 10053
	a, _ := n.startAgentWith(t, cfg, ServeConfig{Socket: n.socket})
	c := agentapi.NewClient(n.socket)
	web := addPod(t, c, "c-web", "web")
	dnsPod := addPod(t, c, "c-dns", "dns")

	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: ext.AsSlice()}}
		w.WriteMsg(m)
	})
	var pc net.PacketConn
	if err := dnsPod.ns.Do(func() (err error) { pc, err = net.ListenPacket("udp", ":53"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: h}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })

	server := netip.AddrPortFrom(dnsPod.addr, 53).String()
	resolve := func(name string) (*dns.Msg, error) {
		var r *dns.Msg
		err := web.ns.Do(func() (err error) {
			m := new(dns.Msg)
			m.SetQuestion(name, dns.TypeA)
			r, _, err = (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, server)
			return err
		})
		return r, err
	}
	dial := func() error {
		return web.ns.Do(func() error {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(ext, 8080).String(), 700*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	if dial() == nil {
		t.Fatal("connected before resolving")
	}
	r, err := resolve("api.example.test.")
	if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("allowed name: %v %v", r, err)
	}
	if err := dial(); err != nil {
		t.Fatalf("resolved address: %v", err)
	}
	if r, err := resolve("evil.test."); err != nil || r.Rcode != dns.RcodeRefused {
		t.Fatalf("other name: %v %v", r, err)
	}

	var seen []string
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.Flows().GetFlows(ctx, flow.Request{Number: 100}, func(r *flow.Response) error {
		if f := r.Flow; f != nil && f.Type == flow.L7 && f.L7.Type == flow.L7Request && f.L7.DNS != nil {
			seen = append(seen, f.Verdict.String()+" "+f.Source.Namespace+"/"+f.Source.PodName+" "+f.L7.DNS.Query)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"FORWARDED prod/web api.example.test.", "DROPPED prod/web evil.test."}
	if strings.Join(seen, "\n") != strings.Join(want, "\n") {
		t.Errorf("L7 DNS query flows:\n%s\nwant\n%s", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}
}
