package watch

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
)

func TestWatcherDeliversInOrderThenClosed(t *testing.T) {
	ctx := context.Background()
	var h Hub[int]
	w := h.Subscribe(Options{})
	for i := range 100 {
		h.Publish(i)
	}
	h.Close()
	for i := range 100 {
		if got, err := w.Next(ctx); err != nil || got != i {
			t.Fatalf("event %d: %d, %v", i, got, err)
		}
	}
	if _, err := w.Next(ctx); !errors.Is(err, nodeplane.ErrClosed) {
		t.Fatalf("after the last event: %v, want ErrClosed", err)
	}
	if late := h.Subscribe(Options{}); late.Backlog() != 0 {
		t.Fatal("a watcher of a closed hub holds events")
	} else if _, err := late.Next(ctx); !errors.Is(err, nodeplane.ErrClosed) {
		t.Fatalf("watcher of a closed hub: %v, want ErrClosed", err)
	}
}

func TestWatcherOverflowAndClose(t *testing.T) {
	ctx := context.Background()
	var h Hub[int]
	slow := h.Subscribe(Options{MaxBacklog: 3})
	unlimited := h.Subscribe(Options{MaxBacklog: -1})
	closed := h.Subscribe(Options{})
	closed.Close()
	for i := range 10 {
		h.Publish(i)
	}
	if _, err := slow.Next(ctx); !errors.Is(err, ErrOverflow) {
		t.Errorf("watcher past its backlog: %v, want ErrOverflow", err)
	}
	if n := unlimited.Backlog(); n != 10 {
		t.Errorf("unlimited watcher holds %d events, want 10", n)
	}
	if _, err := closed.Next(ctx); !errors.Is(err, nodeplane.ErrClosed) || closed.Backlog() != 0 {
		t.Errorf("closed watcher: %v with %d queued, want ErrClosed and none", err, closed.Backlog())
	}
	if err := closed.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestWatcherNextWaits(t *testing.T) {
	var h Hub[string]
	w := h.Subscribe(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := w.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next without events: %v, want the deadline", err)
	}
	got := make(chan string, 1)
	go func() {
		e, _ := w.Next(context.Background())
		got <- e
	}()
	time.Sleep(10 * time.Millisecond)
	h.Publish("wake")
	select {
	case e := <-got:
		if e != "wake" {
			t.Fatalf("woke with %q", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a blocked Next was not woken by an event")
	}
}
