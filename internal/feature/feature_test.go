package feature

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
)

func TestProbeCachesDefinitiveAnswers(t *testing.T) {
	calls := 0
	p := NewProbe("widget", "6.6", func() error {
		calls++
		return fmt.Errorf("no widget: %w", ebpf.ErrNotSupported)
	})
	for range 3 {
		err := p.Result()
		if !errors.Is(err, nodeplane.ErrNotSupported) {
			t.Fatalf("want ErrNotSupported, got %v", err)
		}
		if got, want := err.Error(), "widget requires Linux 6.6 or newer"; got != want {
			t.Fatalf("message %q, want %q", got, want)
		}
	}
	if calls != 1 {
		t.Fatalf("probe ran %d times, want 1", calls)
	}
}

func TestProbeRetriesInconclusiveAnswers(t *testing.T) {
	calls := 0
	errPerm := errors.New("permission denied")
	p := NewProbe("widget", "", func() error {
		calls++
		if calls == 1 {
			return errPerm
		}
		return nil
	})
	if err := p.Result(); !errors.Is(err, errPerm) || errors.Is(err, nodeplane.ErrNotSupported) {
		t.Fatalf("first result %v, want the inconclusive error", err)
	}
	if err := p.Result(); err != nil {
		t.Fatalf("second result %v, want nil", err)
	}
	if err := p.Result(); err != nil || calls != 2 {
		t.Fatalf("third result %v after %d calls, want cached nil after 2", err, calls)
	}
}
