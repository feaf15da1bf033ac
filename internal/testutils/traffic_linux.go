package testutils

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"
)

// ServeEcho runs a TCP echo server on addr inside ns until the test ends,
// and returns its listener. network is "tcp", "tcp4" or "tcp6".
func ServeEcho(tb testing.TB, ns *NetNS, network, addr string) net.Listener {
	tb.Helper()
	var ln net.Listener
	// The socket belongs to the namespace it was created in, so only the
	// Listen call has to run there; Accept may run on any thread.
	if err := ns.Do(func() (err error) { ln, err = net.Listen(network, addr); return err }); err != nil {
		tb.Fatalf("listen %s %s in netns: %v", network, addr, err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln
}

// Iperf3 runs an iperf3 server bound to dst in server and, b.N times, an
// iperf3 client in client that sends to it for the given number of seconds.
// It reports the mean received rate as the "Gbit/s" metric.
func Iperf3(b *testing.B, client, server *NetNS, dst netip.Addr, seconds string) {
	b.Helper()
	srv := exec.Command("iperf3", "-s", "-B", dst.String())
	if err := server.Start(srv); err != nil {
		b.Fatalf("start iperf3 server: %v", err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()

	var total float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rate, err := iperf3Run(client, dst, seconds)
		if err != nil {
			b.Fatal(err)
		}
		total += rate
	}
	b.StopTimer()
	b.ReportMetric(total/float64(b.N)/1e9, "Gbit/s")
}

// Iperf3Rate runs an iperf3 server bound to dst in server and one client
// in client that sends to it for the given number of seconds with extra
// client arguments, and returns the received bits per second.
func Iperf3Rate(tb testing.TB, client, server *NetNS, dst netip.Addr, seconds string, args ...string) float64 {
	tb.Helper()
	srv := exec.Command("iperf3", "-s", "-B", dst.String())
	if err := server.Start(srv); err != nil {
		tb.Fatalf("start iperf3 server: %v", err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	rate, err := iperf3Run(client, dst, seconds, args...)
	if err != nil {
		tb.Fatal(err)
	}
	return rate
}

// iperf3Run runs one client, retrying while the server is not listening
// yet, and returns the received bits per second.
func iperf3Run(client *NetNS, dst netip.Addr, seconds string, args ...string) (float64, error) {
	var (
		out bytes.Buffer
		err error
	)
	for try := 0; try < 30; try++ {
		var res struct {
			Error string `json:"error"`
			End   struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		out.Reset()
		cmd := exec.Command("iperf3", append([]string{"-c", dst.String(), "-t", seconds, "-J"}, args...)...)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err = client.Run(cmd); err == nil {
			// iperf3 -J may exit 0 with the failure in its output.
			if err = json.Unmarshal(out.Bytes(), &res); err == nil && res.Error != "" {
				err = errors.New(res.Error)
			}
		}
		if err == nil && res.End.SumReceived.BitsPerSecond > 0 {
			return res.End.SumReceived.BitsPerSecond, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, fmt.Errorf("iperf3 client to %v: %w\n%s", dst, err, out.Bytes())
}
