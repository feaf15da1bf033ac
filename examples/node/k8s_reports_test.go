package main

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// A status write that fails is retried until it succeeds; one replaced by
// a newer status is not written again; one whose object is gone is not
// retried; events beyond the queue are dropped, not blocked on.
func TestReporter(t *testing.T) {
	p := newReporter(slog.New(slog.DiscardHandler))
	var (
		mu      sync.Mutex
		written []string
		tries   = map[string]int{}
	)
	write := func(name string, failures int, err error) report {
		return report{what: name, do: func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			tries[name]++
			if tries[name] <= failures {
				return err
			}
			written = append(written, name)
			return nil
		}}
	}
	unavailable := apierrors.NewServiceUnavailable("apiserver restarting")
	gone := apierrors.NewNotFound(schema.GroupResource{Group: "cilium.io", Resource: "ciliumnetworkpolicies"}, "old")

	a, b, c := objectKey{"CiliumNetworkPolicy", "prod", "a"}, objectKey{"CiliumNetworkPolicy", "prod", "b"}, objectKey{"CiliumNetworkPolicy", "prod", "c"}
	p.status(a, write("a-v1", 2, unavailable))
	// b's first status is replaced before the reporter runs: only v2 is
	// ever written.
	p.status(b, write("b-v1", 0, nil))
	p.status(b, write("b-v2", 0, nil))
	p.status(c, write("c", 100, gone))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(written)
		mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("written %v after 10 s, want a-v1 (after two failures) and b-v2", written)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A newer status for a replaces nothing pending and is written too.
	p.status(a, write("a-v2", 0, nil))
	for {
		mu.Lock()
		n := len(written)
		mu.Unlock()
		if n == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(written) != 3 || tries["a-v1"] != 3 || tries["b-v1"] != 0 || tries["b-v2"] != 1 || tries["c"] != 1 || tries["a-v2"] != 1 {
		t.Errorf("written %v, tries %v; want a-v1 on its third try, b-v2 once, b-v1 never, c tried once (its object is gone), a-v2 once", written, tries)
	}

	// Events: the queue holds eventQueue; more are dropped at once.
	q := newReporter(slog.New(slog.DiscardHandler))
	for range eventQueue + 10 {
		q.event(write("e", 0, errors.New("unused")))
	}
	if len(q.events) != eventQueue {
		t.Errorf("%d events queued, want %d", len(q.events), eventQueue)
	}
}
