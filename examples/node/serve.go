package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/flow/hubble"
	"github.com/nodeplane/nodeplane/flow/metrics"
)

// ServeConfig says where the agent serves its APIs. Empty addresses turn
// the Hubble and metrics servers off.
type ServeConfig struct {
	// Socket is the local API's unix socket (mode 0600).
	Socket string
	// HubbleListen is the Hubble Observer gRPC address, e.g.
	// 127.0.0.1:4245.
	HubbleListen string
	// MetricsListen is the Prometheus address, e.g. 127.0.0.1:9962.
	MetricsListen string
}

// startFlows starts the flow observer on the datapath's events, with
// Hubble's and Cilium's metrics (and the Go runtime's) in a.reg.
func (a *Agent) startFlows() error {
	a.reg = prometheus.NewRegistry()
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.New(a.reg)
	if err != nil {
		return err
	}
	obs, err := flow.New(flow.Config{Source: a.events, KernelLost: a.dp.EventsLost, NodeName: a.cfg.Node, Catalog: a.catalog, Sink: m})
	if err != nil {
		return err
	}
	a.obs = obs
	a.goroutine("flow observer", obs.Run)
	return nil
}

// Flows returns the agent's flow observer.
func (a *Agent) Flows() *flow.Observer { return a.obs }

// Serve serves the local API, Hubble and metrics and follows the
// manifests until ctx is done; then it stops the servers (the agent stays
// open: Close or Uninstall it).
func (a *Agent) Serve(ctx context.Context, cfg ServeConfig) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var closers []func() error
	defer func() {
		for _, c := range closers {
			if cerr := c(); cerr != nil && !errors.Is(cerr, http.ErrServerClosed) {
				err = errors.Join(err, cerr)
			}
		}
	}()
	errc := make(chan error, 4)

	if cfg.Socket == "" {
		cfg.Socket = agentapi.DefaultSocket
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o700); err != nil {
		return err
	}
	// A socket file left by an agent that died: nobody answers on it.
	if c, derr := net.Dial("unix", cfg.Socket); derr == nil {
		c.Close()
		return fmt.Errorf("%s: another agent is serving on it", cfg.Socket)
	}
	_ = os.Remove(cfg.Socket)
	ln, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		return err
	}
	if err := os.Chmod(cfg.Socket, 0o600); err != nil {
		ln.Close()
		return err
	}
	api := &http.Server{Handler: agentapi.NewHandler(a), ReadHeaderTimeout: 10 * time.Second}
	closers = append(closers, api.Close, func() error {
		if err := os.Remove(cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	})
	go func() { errc <- api.Serve(ln) }()
	a.log.Info("local API listening", "socket", cfg.Socket)

	if cfg.HubbleListen != "" {
		hs, err := hubble.New(hubble.Config{Flows: a.obs, NodeName: a.cfg.Node})
		if err != nil {
			return err
		}
		hl, err := net.Listen("tcp", cfg.HubbleListen)
		if err != nil {
			return fmt.Errorf("hubble: %w", err)
		}
		closers = append(closers, hs.Close)
		go func() { errc <- hs.Serve(hl) }()
		a.log.Info("hubble observer listening", "addr", hl.Addr().String())
	}
	if cfg.MetricsListen != "" {
		ml, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
		ms := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		closers = append(closers, ms.Close)
		go func() { errc <- ms.Serve(ml) }()
		a.log.Info("metrics listening", "addr", ml.Addr().String())
	}
	if a.cfg.Manifests != "" {
		go func() { errc <- a.watchManifests(ctx) }()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) || errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	}
}
