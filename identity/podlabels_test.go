package identity

import (
	"errors"
	"slices"
	"testing"
)

// TestPodLabels checks PodLabels against label lists written out by hand
// from Cilium's SanitizePodLabels (pkg/k8s/utils) and the namespace label
// the API server adds to every namespace.
func TestPodLabels(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg  PodLabelsConfig
		want []string
	}{
		"minimal": {
			cfg: PodLabelsConfig{Namespace: "default"},
			want: []string{
				"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=default",
				"k8s:io.cilium.k8s.policy.cluster=default",
				"k8s:io.kubernetes.pod.namespace=default",
			},
		},
		"everything": {
			cfg: PodLabelsConfig{
				Namespace:       "prod",
				Cluster:         "east",
				ServiceAccount:  "web-sa",
				Labels:          map[string]string{"app": "web", "app.kubernetes.io/part-of": "shop", "tier": ""},
				NamespaceLabels: map[string]string{"team": "payments", "env": "prod"},
			},
			want: []string{
				"k8s:app=web",
				"k8s:app.kubernetes.io/part-of=shop",
				"k8s:io.cilium.k8s.namespace.labels.env=prod",
				"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=prod",
				"k8s:io.cilium.k8s.namespace.labels.team=payments",
				"k8s:io.cilium.k8s.policy.cluster=east",
				"k8s:io.cilium.k8s.policy.serviceaccount=web-sa",
				"k8s:io.kubernetes.pod.namespace=prod",
				"k8s:tier",
			},
		},
		// A pod's labels cannot claim another namespace, cluster or
		// service account: Cilium drops its io.cilium.k8s* labels and
		// overwrites the namespace.
		"pod labels cannot override": {
			cfg: PodLabelsConfig{
				Namespace: "prod",
				Labels: map[string]string{
					"app":                                 "web",
					"io.kubernetes.pod.namespace":         "kube-system",
					"io.cilium.k8s.policy.cluster":        "other",
					"io.cilium.k8s.policy.serviceaccount": "admin",
					"io.cilium.k8s.namespace.labels.team": "root",
				},
			},
			want: []string{
				"k8s:app=web",
				"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=prod",
				"k8s:io.cilium.k8s.policy.cluster=default",
				"k8s:io.kubernetes.pod.namespace=prod",
			},
		},
		// The API server sets kubernetes.io/metadata.name to the name.
		"namespace name label": {
			cfg: PodLabelsConfig{Namespace: "prod", NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "wrong"}},
			want: []string{
				"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=prod",
				"k8s:io.cilium.k8s.policy.cluster=default",
				"k8s:io.kubernetes.pod.namespace=prod",
			},
		},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := PodLabels(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			var strs []string
			for l := range got.All() {
				strs = append(strs, l.String())
			}
			slices.Sort(strs)
			if !slices.Equal(strs, slices.Sorted(slices.Values(tc.want))) {
				t.Errorf("PodLabels =\n%q\nwant\n%q", strs, tc.want)
			}
			// The same set, parsed from the list as a user would write it.
			want, err := ParseLabels(tc.want...)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("PodLabels = %v, want %v", got, want)
			}
		})
	}
}

func TestPodLabelsRejects(t *testing.T) {
	for name, cfg := range map[string]PodLabelsConfig{
		"no namespace":        {Labels: map[string]string{"app": "web"}},
		"bad pod label":       {Namespace: "prod", Labels: map[string]string{"": "x"}},
		"bad namespace label": {Namespace: "prod", NamespaceLabels: map[string]string{"a;b": "x"}},
	} {
		if ls, err := PodLabels(cfg); !errors.Is(err, ErrInvalidLabel) {
			t.Errorf("%s: PodLabels = %v, %v; want ErrInvalidLabel", name, ls, err)
		}
	}
}

// TestPodLabelsSelectedAsCilium: the selectors Cilium derives from a
// namespaced policy (the namespace and cluster labels, here written out)
// select the pod, and those of another namespace or cluster do not.
func TestPodLabelsSelectedAsCilium(t *testing.T) {
	pod, err := PodLabels(PodLabelsConfig{Namespace: "prod", Labels: map[string]string{"app": "web"},
		NamespaceLabels: map[string]string{"team": "payments"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		match map[string]string
		want  bool
	}{
		{map[string]string{"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "prod", "k8s:io.cilium.k8s.policy.cluster": "default"}, true},
		{map[string]string{"io.cilium.k8s.namespace.labels.team": "payments"}, true},
		{map[string]string{"io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": "prod"}, true},
		{map[string]string{"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "dev"}, false},
		{map[string]string{"k8s:app": "web", "k8s:io.cilium.k8s.policy.cluster": "east"}, false},
	} {
		sel, err := NewSelector(LabelSelector{MatchLabels: tc.match})
		if err != nil {
			t.Fatal(err)
		}
		if got := sel.Matches(pod); got != tc.want {
			t.Errorf("selector %v matches %v = %v, want %v", tc.match, pod, got, tc.want)
		}
	}
}
