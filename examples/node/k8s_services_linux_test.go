package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// dialerEnv makes the test binary a dialer: a process in a pod's
// namespace and in the cgroup the socket load balancer is attached to
// (the test process is in neither), driven over stdin.
const dialerEnv = "NODEPLANE_TEST_DIALER"

// runDialer serves "dial ADDR" (connect, print the first line the server
// sends) and "send N" (write a line on connection N, print the answer).
func runDialer(in io.Reader, out io.Writer) int {
	var conns []*bufio.ReadWriter
	s := bufio.NewScanner(in)
	for s.Scan() {
		op, arg, _ := strings.Cut(s.Text(), " ")
		reply := ""
		switch op {
		case "dial":
			c, err := net.DialTimeout("tcp", arg, 2*time.Second)
			if err != nil {
				reply = "error " + err.Error()
				break
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			rw := bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
			line, err := rw.ReadString('\n')
			if err != nil {
				reply = "error " + err.Error()
				break
			}
			conns = append(conns, rw)
			reply = fmt.Sprintf("%d %s", len(conns)-1, strings.TrimSpace(line))
		case "send":
			var i int
			fmt.Sscan(arg, &i)
			rw := conns[i]
			rw.WriteString("ping\n")
			rw.Flush()
			line, err := rw.ReadString('\n')
			if err != nil {
				reply = "error " + err.Error()
				break
			}
			reply = strings.TrimSpace(line)
		}
		fmt.Fprintln(out, reply)
	}
	return 0
}

// dialer is a runDialer process.
type dialer struct {
	t   testing.TB
	in  io.WriteCloser
	out *bufio.Scanner
}

func startDialer(t testing.TB, ns *testutils.NetNS, cg *testutils.Cgroup) *dialer {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cgfd, err := cg.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer cgfd.Close()
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), dialerEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cgfd.Fd())}
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = prefixWriter{t, "dialer: "}
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); _ = cmd.Wait() })
	return &dialer{t: t, in: in, out: bufio.NewScanner(out)}
}

func (d *dialer) do(cmd string) string {
	d.t.Helper()
	fmt.Fprintln(d.in, cmd)
	if !d.out.Scan() {
		d.t.Fatalf("dialer: no answer to %q", cmd)
	}
	return d.out.Text()
}

// serveNamed accepts connections in ns on addr, greets each with name and
// answers each line with name:line.
func serveNamed(t testing.TB, ns *testutils.NetNS, addr, name string) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintln(c, name)
				s := bufio.NewScanner(c)
				for s.Scan() {
					fmt.Fprintf(c, "%s:%s\n", name, s.Text())
				}
			}()
		}
	}()
}

// TestPrivilegedKubernetesServices: a Service with an EndpointSlice in
// the API server is reachable through its ClusterIP by the socket load
// balancer; scaling the EndpointSlice moves new connections only.
func TestPrivilegedKubernetesServices(t *testing.T) {
	e := newK8sEnv(t)
	e.startAgent(true)
	client := e.pod("prod", "client", k8sNode, map[string]string{"app": "client"}, false)
	api1 := e.pod("prod", "api-1", k8sNode, map[string]string{"app": "api"}, false)
	api2 := e.pod("prod", "api-2", k8sNode, map[string]string{"app": "api"}, false)
	serveNamed(t, api1.ns, netip.AddrPortFrom(api1.addr, 8080).String(), "api-1")
	serveNamed(t, api2.ns, netip.AddrPortFrom(api2.addr, 8080).String(), "api-2")

	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "prod"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}}}
	created, err := e.api.client.CoreV1().Services("prod").Create(e.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.AddrPortFrom(netip.MustParseAddr(created.Spec.ClusterIP), 80)
	t.Logf("service prod/api has ClusterIP %v", vip.Addr())
	slices := e.api.client.DiscoveryV1().EndpointSlices("prod")
	ready := true
	slice := func(addrs ...netip.Addr) *discoveryv1.EndpointSlice {
		port, proto := int32(8080), corev1.ProtocolTCP
		sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "api-abcde", Namespace: "prod",
			Labels: map[string]string{discoveryv1.LabelServiceName: "api"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Port: &port, Protocol: &proto, Name: new("")}}}
		for _, a := range addrs {
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{a.String()},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
		}
		return sl
	}
	if _, err := slices.Create(e.ctx, slice(api1.addr), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	d := startDialer(t, client.ns, e.cg)
	var first string
	waitFor(t, "the ClusterIP to reach api-1", func() bool {
		first = d.do("dial " + vip.String())
		return strings.HasSuffix(first, " api-1")
	})
	conn, _, _ := strings.Cut(first, " ")

	// Scale: api-2 replaces api-1.
	sl, err := slices.Get(e.ctx, "api-abcde", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	next := slice(api2.addr)
	next.ResourceVersion = sl.ResourceVersion
	if _, err := slices.Update(e.ctx, next, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	waitFor(t, "new connections to reach api-2", func() bool { return strings.HasSuffix(d.do("dial "+vip.String()), " api-2") })
	t.Logf("new connections moved to api-2 %v after the EndpointSlice changed", time.Since(changed).Round(time.Millisecond))
	for range 5 {
		if got := d.do("dial " + vip.String()); !strings.HasSuffix(got, " api-2") {
			t.Errorf("new connection after scaling: %q, want api-2", got)
		}
	}
	if got := d.do("send " + conn); got != "api-1:ping" {
		t.Errorf("the connection established before scaling answered %q, want api-1:ping (it must stay on api-1)", got)
	}
	_ = context.Background
}
