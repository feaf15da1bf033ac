package agentapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"testing"
)

type fakeBackend struct{ added []AddRequest }

func (f *fakeBackend) Add(_ context.Context, req AddRequest) (AddResponse, error) {
	if req.Pod == "full" {
		return AddResponse{}, Errorf(CodeExhausted, "pool exhausted")
	}
	f.added = append(f.added, req)
	return AddResponse{EndpointID: 7, IPs: []IPConfig{{Address: netip.MustParsePrefix("10.0.0.7/32")}}}, nil
}
func (f *fakeBackend) Del(context.Context, DelRequest) error     { return errors.New("plain failure") }
func (f *fakeBackend) Check(context.Context, CheckRequest) error { return nil }
func (f *fakeBackend) List(context.Context) ([]Endpoint, error) {
	return []Endpoint{{EndpointID: 7}}, nil
}
func (f *fakeBackend) GC(_ context.Context, req GCRequest) (GCResponse, error) {
	return GCResponse{Removed: req.Valid}, nil
}
func (f *fakeBackend) Status(context.Context) (Status, error) {
	return Status{Ready: true, Node: "n"}, nil
}

func TestRoundTrip(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBackend{}
	srv := &http.Server{Handler: NewHandler(b)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	c, ctx := NewClient(sock), context.Background()
	resp, err := c.Add(ctx, AddRequest{Attachment: Attachment{ContainerID: "c1", IfName: "eth0"}, Labels: map[string]string{"app": "web"}})
	if err != nil || resp.EndpointID != 7 || resp.IPs[0].Address != netip.MustParsePrefix("10.0.0.7/32") {
		t.Fatalf("Add = %+v, %v", resp, err)
	}
	if len(b.added) != 1 || b.added[0].Labels["app"] != "web" || b.added[0].ContainerID != "c1" {
		t.Fatalf("backend got %+v", b.added)
	}
	if _, err := c.Add(ctx, AddRequest{Pod: "full"}); CodeOf(err) != CodeExhausted {
		t.Errorf("exhausted: %v (code %d)", err, CodeOf(err))
	}
	if err := c.Del(ctx, DelRequest{}); CodeOf(err) != CodeIOFailure || err.Error() != "plain failure (code 5)" {
		t.Errorf("plain error: %v", err)
	}
	if eps, err := c.List(ctx); err != nil || len(eps) != 1 {
		t.Errorf("List = %v, %v", eps, err)
	}
	if st, err := c.Status(ctx); err != nil || !st.Ready {
		t.Errorf("Status = %+v, %v", st, err)
	}
	if gc, err := c.GC(ctx, GCRequest{Valid: []Attachment{{"c1", "eth0"}}}); err != nil || len(gc.Removed) != 1 {
		t.Errorf("GC = %+v, %v", gc, err)
	}
}

func TestAgentUnavailable(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "none.sock"))
	_, err := c.Status(context.Background())
	if CodeOf(err) != CodeAgentUnavailable {
		t.Fatalf("no agent: %v (code %d)", err, CodeOf(err))
	}
}
