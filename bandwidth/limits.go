package bandwidth

import (
	"fmt"
	"strconv"
	"time"
)

// The pod annotations ParseAnnotations reads: Kubernetes' two bandwidth
// annotations (the CNI bandwidth plugin's) and Cilium's priority.
const (
	EgressAnnotation   = "kubernetes.io/egress-bandwidth"
	IngressAnnotation  = "kubernetes.io/ingress-bandwidth"
	PriorityAnnotation = "bandwidth.cilium.io/priority"
)

// DefaultHorizon is how far into the future a packet's departure time may
// lie before the EDT program drops it: Cilium's default drop horizon and
// fq's default horizon (2 s).
const DefaultHorizon = 2 * time.Second

// MaxPriority is the largest priority: skb->priority values 0-15 select
// fq's bands through its priomap (Linux 6.7), as Cilium's priority
// annotation.
const MaxPriority = 15

// Limits is what one endpoint asks for. A zero rate means unlimited in that
// direction; the zero Limits limits nothing.
type Limits struct {
	// Egress limits what the endpoint sends, in bits per second.
	Egress Rate
	// Ingress limits what the endpoint receives, in bits per second. Only
	// the token-bucket fallback enforces it (as the CNI bandwidth plugin
	// does); EDT shapes egress only.
	Ingress Rate
	// Priority, when HasPriority, is the skb->priority the EDT program
	// gives the endpoint's packets (0-15).
	Priority    uint8
	HasPriority bool
}

// Unlimited reports whether l limits nothing.
func (l Limits) Unlimited() bool { return l.Egress == 0 && l.Ingress == 0 }

// Validate checks that each set rate lies within [MinRate, MaxRate] and
// the priority within [0, MaxPriority]. Errors wrap [ErrInvalidRate].
func (l Limits) Validate() error {
	for _, r := range []struct {
		name string
		rate Rate
	}{{"egress", l.Egress}, {"ingress", l.Ingress}} {
		if r.rate != 0 && (r.rate < MinRate || r.rate > MaxRate) {
			return fmt.Errorf("%w: %s rate %d bit/s outside [%v, %v]", ErrInvalidRate, r.name, uint64(r.rate), MinRate, MaxRate)
		}
	}
	if l.HasPriority && l.Priority > MaxPriority {
		return fmt.Errorf("%w: priority %d above %d", ErrInvalidRate, l.Priority, MaxPriority)
	}
	return nil
}

// ParseAnnotations reads a pod's bandwidth annotations. Annotations it
// does not know are ignored; a known one with a bad value is an error
// wrapping [ErrInvalidRate] that names the annotation.
func ParseAnnotations(annotations map[string]string) (Limits, error) {
	var l Limits
	for _, a := range []struct {
		key  string
		rate *Rate
	}{{EgressAnnotation, &l.Egress}, {IngressAnnotation, &l.Ingress}} {
		s, ok := annotations[a.key]
		if !ok {
			continue
		}
		r, err := ParseRate(s)
		if err != nil {
			return Limits{}, fmt.Errorf("annotation %s: %w", a.key, err)
		}
		*a.rate = r
	}
	if s, ok := annotations[PriorityAnnotation]; ok {
		p, err := strconv.ParseUint(s, 10, 8)
		if err != nil || p > MaxPriority {
			return Limits{}, fmt.Errorf("annotation %s: %w: priority %q is not an integer in [0, %d]", PriorityAnnotation, ErrInvalidRate, s, MaxPriority)
		}
		l.Priority, l.HasPriority = uint8(p), true
	}
	return l, nil
}
