package etcdalloc

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils/etcdtest"
)

// BenchmarkEtcd compares, on one embedded etcd server, the throughput of
// raw Put calls (the baseline: one fsync'd write each) with Allocate calls
// that create a new identity (a Get, a three-key transaction, and the wait
// for the watch to deliver it), for 1, 8 and 64 concurrent callers.
func BenchmarkEtcd(b *testing.B) {
	srv := etcdtest.Start(b)
	cli := srv.Client(b)
	run := 0
	for _, callers := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("Put/callers=%d", callers), func(b *testing.B) {
			run++
			prefix := fmt.Sprintf("bench/put/%d/", run)
			parallel(b, callers, func(ctx context.Context, i int) error {
				_, err := cli.Put(ctx, prefix+strconv.Itoa(i), "k8s:app=x;")
				return err
			})
		})
		b.Run(fmt.Sprintf("Allocate/callers=%d", callers), func(b *testing.B) {
			run++
			ctx := context.Background()
			a, err := New(ctx, Config{
				Client: cli, NodeName: "bench", GCInterval: -1,
				Prefix: fmt.Sprintf("bench/alloc/%d/", run),
			})
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			if b.N > identity.MaxClusterIndex-identity.MinClusterIndex {
				b.Fatalf("b.N %d exceeds the cluster's ID range", b.N)
			}
			sets := make([]identity.Labels, b.N)
			for i := range sets {
				sets[i], _ = identity.ParseLabels(fmt.Sprintf("k8s:app=app%d", i), "k8s:io.kubernetes.pod.namespace=bench")
			}
			parallel(b, callers, func(ctx context.Context, i int) error {
				_, _, err := a.Allocate(ctx, sets[i])
				return err
			})
		})
	}
}

// parallel runs op for i in [0, b.N) on the given number of goroutines and
// reports the throughput.
func parallel(b *testing.B, callers int, op func(ctx context.Context, i int) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	b.ResetTimer()
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				if err := op(ctx, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
}
