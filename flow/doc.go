// Package flow turns the datapath's records into Hubble flows: a decoder
// from every record to a [Flow] with Hubble's field semantics, enrichment
// with names and labels as they were when the packet passed ([Catalog]),
// Hubble's filters ([Filter], [Compile]), a ring of the last flows with
// follow/since/until/first/last and lost-event accounting ([Ring]), and an
// [Observer] that reads records, decodes, enriches, stores and serves them.
// Output in the JSON of `hubble observe -o jsonpb` is [Flow.AppendJSON];
// Prometheus metrics with Hubble's and Cilium's names live in the
// subpackage flow/metrics, so that importing flow does not import
// client_golang.
//
// Flows carry flow.proto's numbers for every enum (Verdict,
// TrafficDirection, ObservationPoint, TraceReason, ...), so a gRPC server
// (Hubble's Observer API) converts a Flow to the protobuf field by field
// with casts.
//
// Importing flow costs the standard library, datapath/monitor (std only)
// and golang.org/x/sys/unix for the clock: `go list -deps ./flow | wc -l`
// is 73 packages (datapath: 171; flow/metrics, with client_golang: 239).
//
// # Hot path
//
// [Decoder.Decode] decodes a record into a caller's *Flow without
// allocating; labels and names are shared, immutable slices and strings
// from the Catalog. A record that is truncated or garbage is rejected with
// an error wrapping monitor.ErrMalformed; the Observer counts it by reason
// and goes on.
package flow
