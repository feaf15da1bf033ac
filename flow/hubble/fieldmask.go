package hubble

import (
	"fmt"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
)

// fieldMask keeps only the fields a GetFlows request names, as Hubble's
// server does. `hubble observe` sends one for its compact, dict and table
// output (the fields those print); the zero value keeps every field.
type fieldMask struct {
	paths [][]protoreflect.FieldDescriptor
}

func newFieldMask(fm *fieldmaskpb.FieldMask) (fieldMask, error) {
	if len(fm.GetPaths()) == 0 {
		return fieldMask{}, nil
	}
	desc := (&flowpb.Flow{}).ProtoReflect().Descriptor()
	var m fieldMask
	for _, p := range fm.GetPaths() {
		var (
			fds []protoreflect.FieldDescriptor
			md  = desc
		)
		for _, name := range strings.Split(p, ".") {
			if md == nil {
				return fieldMask{}, fmt.Errorf("field mask %q: %s is not a message", p, fds[len(fds)-1].Name())
			}
			fd := md.Fields().ByName(protoreflect.Name(name))
			if fd == nil {
				return fieldMask{}, fmt.Errorf("field mask %q: no field %q in %s", p, name, md.FullName())
			}
			if fd.IsList() || fd.IsMap() {
				md = nil // a repeated field ends a path
			} else {
				md = fd.Message()
			}
			fds = append(fds, fd)
		}
		m.paths = append(m.paths, fds)
	}
	return m, nil
}

// apply returns f with only the masked fields (f itself without a mask).
func (m fieldMask) apply(f *flowpb.Flow) *flowpb.Flow {
	if m.paths == nil {
		return f
	}
	out := &flowpb.Flow{}
	for _, p := range m.paths {
		copyPath(out.ProtoReflect(), f.ProtoReflect(), p)
	}
	return out
}

func copyPath(dst, src protoreflect.Message, path []protoreflect.FieldDescriptor) {
	fd := path[0]
	if !src.Has(fd) {
		return
	}
	if len(path) == 1 {
		dst.Set(fd, src.Get(fd))
		return
	}
	copyPath(dst.Mutable(fd).Message(), src.Get(fd).Message(), path[1:])
}
