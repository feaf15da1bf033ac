package hubble

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodeplane/nodeplane/flow"
)

// ServiceName is the name `hubble status` asks the gRPC health service
// about (Cilium's pkg/hubble/api/v1.ObserverServiceName).
const ServiceName = "hubble.server.Observer"

// Observer is what a Server serves: the flows of one node, as a
// [*flow.Observer] holds them.
type Observer interface {
	// GetFlows calls fn with the flows req selects, oldest first, and with
	// lost-event reports, until the past flows are exhausted (without
	// Follow), ctx ends or fn fails. It must not hold up the writer of
	// flows while fn runs: a reader that falls behind loses flows and is
	// told so with a LostHubbleRing report.
	GetFlows(ctx context.Context, req flow.Request, fn func(*flow.Response) error) error
	// Status describes the stored flows.
	Status() flow.Status
}

// Config configures a [Server].
type Config struct {
	// Flows is what the server serves. Required.
	Flows Observer
	// NodeName names the node in GetNodes and in every response that is
	// not a flow (flows carry their own). Default: Flows.NodeName() when
	// Flows has that method (*flow.Observer does) and it is set, else the
	// host name.
	NodeName string
	// Address is the node's address GetNodes reports; optional.
	Address string
	// Version is the server version ServerStatus and GetNodes report.
	// Default: "nodeplane".
	Version string
}

// Server implements Hubble's Observer gRPC service (GetFlows, ServerStatus,
// GetNodes, GetNamespaces) and the gRPC health service over an [Observer].
// Create it with [New], then either [Server.Serve] a listener or
// [Server.Register] it on a grpc.Server of your own.
type Server struct {
	observerpb.UnimplementedObserverServer

	src    Observer
	cfg    Config
	start  time.Time
	health *health.Server

	mu     sync.Mutex
	grpc   *grpc.Server // the server Serve made, if any
	closed bool
}

var _ observerpb.ObserverServer = (*Server)(nil)

// New returns a server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Flows == nil {
		return nil, errors.New("hubble: Config.Flows is required")
	}
	if n, ok := cfg.Flows.(interface{ NodeName() string }); ok && cfg.NodeName == "" {
		cfg.NodeName = n.NodeName()
	}
	if cfg.NodeName == "" {
		name, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("hubble: node name: %w", err)
		}
		cfg.NodeName = name
	}
	if cfg.Version == "" {
		cfg.Version = "nodeplane"
	}
	s := &Server{src: cfg.Flows, cfg: cfg, start: time.Now(), health: health.NewServer()}
	s.health.SetServingStatus(ServiceName, healthpb.HealthCheckResponse_SERVING)
	return s, nil
}

// Register registers the Observer and health services on g.
func (s *Server) Register(g *grpc.Server) {
	observerpb.RegisterObserverServer(g, s)
	healthpb.RegisterHealthServer(g, s.health)
}

// Serve serves Hubble's API on l, without TLS (as a Hubble agent's local
// socket does; put it on loopback or a Unix socket), until [Server.Close].
// It returns nil after Close.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("hubble: serve: %w", os.ErrClosed)
	}
	if s.grpc == nil {
		s.grpc = grpc.NewServer()
		s.Register(s.grpc)
	}
	g := s.grpc
	s.mu.Unlock()
	if err := g.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// Close stops Serve, closing its listeners and ending every call in
// progress (a followed GetFlows never ends by itself).
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.health.Shutdown()
	if s.grpc != nil {
		s.grpc.Stop()
	}
	return nil
}

// GetFlows streams the flows req selects. Hubble's semantics: Number is
// the last (or with First, the first) N matching flows, Follow continues
// with new ones, Since and Until bound the time, the whitelist ORs filters
// that must match and the blacklist ORs filters that must not, and a
// field mask limits the fields sent.
func (s *Server) GetFlows(req *observerpb.GetFlowsRequest, stream observerpb.Observer_GetFlowsServer) error {
	r, err := request(req)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	mask, err := newFieldMask(req.GetFieldMask())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	ctx := stream.Context()
	err = s.src.GetFlows(ctx, r, func(resp *flow.Response) error {
		var out *observerpb.GetFlowsResponse
		switch {
		case resp.Flow != nil:
			f := mask.apply(Proto(resp.Flow))
			out = &observerpb.GetFlowsResponse{
				Time:          timestamppb.New(resp.Flow.Time),
				NodeName:      resp.Flow.NodeName,
				ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: f},
			}
		case resp.Lost != nil:
			out = &observerpb.GetFlowsResponse{
				Time:          timestamppb.New(resp.Lost.Time),
				NodeName:      s.cfg.NodeName,
				ResponseTypes: &observerpb.GetFlowsResponse_LostEvents{LostEvents: lostEvent(resp.Lost)},
			}
		default:
			return nil
		}
		if out.NodeName == "" {
			out.NodeName = s.cfg.NodeName
		}
		return stream.Send(out)
	})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, flow.ErrInvalidFilter):
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if _, ok := status.FromError(err); ok {
		return err // from Send
	}
	return status.Error(codes.Internal, err.Error())
}

// ServerStatus reports the numbers `hubble status` prints.
func (s *Server) ServerStatus(ctx context.Context, _ *observerpb.ServerStatusRequest) (*observerpb.ServerStatusResponse, error) {
	st := s.src.Status()
	rate, err := s.flowRate(ctx, st, time.Now())
	if err != nil {
		return nil, err
	}
	return &observerpb.ServerStatusResponse{
		NumFlows:            st.NumFlows,
		MaxFlows:            st.MaxFlows,
		SeenFlows:           st.SeenFlows,
		UptimeNs:            uint64(s.uptime(st)),
		NumConnectedNodes:   wrapperspb.UInt32(1),
		NumUnavailableNodes: wrapperspb.UInt32(0),
		Version:             s.cfg.Version,
		FlowsRate:           rate,
	}, nil
}

// flowRate is Hubble's: the flows of the last minute per second; when the
// ring wrapped within that minute (it is full and its oldest flow is
// younger), per second of the time its flows span.
func (s *Server) flowRate(ctx context.Context, st flow.Status, now time.Time) (float64, error) {
	since := now.Add(-time.Minute)
	var (
		n      int
		oldest time.Time
	)
	err := s.src.GetFlows(ctx, flow.Request{Since: since, Until: now}, func(r *flow.Response) error {
		if r.Flow != nil {
			if n == 0 {
				oldest = r.Flow.Time
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, status.Error(codes.Internal, err.Error())
	}
	if n > 0 && st.MaxFlows > 0 && st.NumFlows >= st.MaxFlows && oldest.After(since) {
		since = oldest // the ring wrapped within the minute
	}
	if d := now.Sub(since).Seconds(); d > 0 {
		return float64(n) / d, nil
	}
	return 0, nil
}

// uptime is the Observer's (which Hubble's server is), or the server's
// when the Observer does not say.
func (s *Server) uptime(st flow.Status) time.Duration {
	if st.Uptime > 0 {
		return st.Uptime
	}
	return time.Since(s.start)
}

// GetNodes reports this node, the only one a node-local server knows.
func (s *Server) GetNodes(context.Context, *observerpb.GetNodesRequest) (*observerpb.GetNodesResponse, error) {
	st := s.src.Status()
	return &observerpb.GetNodesResponse{Nodes: []*observerpb.Node{{
		Name:      s.cfg.NodeName,
		Version:   s.cfg.Version,
		Address:   s.cfg.Address,
		State:     relaypb.NodeState_NODE_CONNECTED,
		UptimeNs:  uint64(s.uptime(st)),
		NumFlows:  st.NumFlows,
		MaxFlows:  st.MaxFlows,
		SeenFlows: st.SeenFlows,
	}}}, nil
}

// GetNamespaces lists the namespaces of the pods in the stored flows,
// sorted (`hubble list namespaces`). Hubble lists those of the flows of
// the last hour; a node-local ring holds fewer, so this may list fewer.
func (s *Server) GetNamespaces(ctx context.Context, _ *observerpb.GetNamespacesRequest) (*observerpb.GetNamespacesResponse, error) {
	seen := map[string]bool{}
	err := s.src.GetFlows(ctx, flow.Request{}, func(r *flow.Response) error {
		if r.Flow != nil {
			seen[r.Flow.Source.Namespace] = true
			seen[r.Flow.Destination.Namespace] = true
		}
		return nil
	})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	delete(seen, "")
	resp := &observerpb.GetNamespacesResponse{}
	for _, ns := range slices.Sorted(maps.Keys(seen)) {
		resp.Namespaces = append(resp.Namespaces, &observerpb.Namespace{Namespace: ns})
	}
	return resp, nil
}

var _ Observer = (*flow.Observer)(nil)
