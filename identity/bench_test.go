package identity

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkInProcessAllocate measures Allocate on the in-process allocator:
// "known" takes another reference to a label set that has an ID, "new"
// creates the ID of a label set not seen before, "new-persisted" does the
// same with a state file (one fsync'd rewrite per new ID).
func BenchmarkInProcessAllocate(b *testing.B) {
	ctx := context.Background()
	b.Run("known", func(b *testing.B) {
		a, err := NewInProcessAllocator(InProcessConfig{})
		if err != nil {
			b.Fatal(err)
		}
		defer a.Close()
		ls := benchLabels(b, 1)[0]
		a.Allocate(ctx, ls)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, _, err := a.Allocate(ctx, ls); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, persisted := range []bool{false, true} {
		name := "new"
		if persisted {
			name = "new-persisted"
		}
		b.Run(name, func(b *testing.B) {
			cfg := InProcessConfig{}
			if persisted {
				cfg.StatePath = filepath.Join(b.TempDir(), "state")
			}
			a, err := NewInProcessAllocator(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			// The cluster range holds 65280 IDs: allocate in batches and
			// free each batch outside the timer.
			const batch = 50000
			sets := benchLabels(b, min(b.N, batch))
			ids := make([]ID, 0, len(sets))
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				id, _, err := a.Allocate(ctx, sets[i%len(sets)])
				if err != nil {
					b.Fatal(err)
				}
				ids = append(ids, id)
				if len(ids) == len(sets) {
					b.StopTimer()
					for _, id := range ids {
						a.Release(ctx, id)
					}
					ids = ids[:0]
					b.StartTimer()
				}
			}
		})
	}
}

func benchLabels(b *testing.B, n int) []Labels {
	sets := make([]Labels, n)
	for i := range sets {
		ls, err := ParseLabels(fmt.Sprintf("k8s:app=app%d", i), "k8s:io.kubernetes.pod.namespace=prod",
			"k8s:io.cilium.k8s.policy.cluster=default", "k8s:io.cilium.k8s.policy.serviceaccount=default")
		if err != nil {
			b.Fatal(err)
		}
		sets[i] = ls
	}
	return sets
}

// BenchmarkSelectorMatches measures matching a typical policy selector
// against a pod's labels.
func BenchmarkSelectorMatches(b *testing.B) {
	sel, err := NewSelector(LabelSelector{
		MatchLabels: map[string]string{"app": "web", "k8s:io.kubernetes.pod.namespace": "prod"},
		MatchExpressions: []SelectorRequirement{
			{Key: "tier", Operator: SelectorOpNotIn, Values: []string{"db"}},
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	ls, _ := ParseLabelList(pod)
	b.ReportAllocs()
	for range b.N {
		if !sel.Matches(ls) {
			b.Fatal("no match")
		}
	}
}
