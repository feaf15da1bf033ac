// Package ringread reads a BPF ring buffer of datapath records as raw
// bytes, with a deadline that also wakes a read already waiting: the
// reading half of datapath's EventReader and of lb's north-south drop
// events, both of which implement flow.Source with it.
package ringread
