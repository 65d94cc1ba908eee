package devfs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// immutable refuses, with EPERM, every request that would change the
// mount's tree or a file's attributes: unlink, rmdir, rename, create
// (O_CREAT of a new name, O_TMPFILE), mkdir, mknod, link, symlink, setattr
// (chmod, chown, truncate, utimes) and extended attributes. Every node type
// embeds it: go-fuse's default for a node without a handler is to let
// unlink and rmdir succeed (the node vanishes from the tree while the
// device is still registered) and to answer the rest with ENOTSUP.
//
// The tree belongs to the registry: nodes appear and disappear only with
// the devices behind them, and their modes are the daemon's options.
type immutable struct{}

var (
	_ = (fs.NodeUnlinker)((*immutable)(nil))
	_ = (fs.NodeRmdirer)((*immutable)(nil))
	_ = (fs.NodeRenamer)((*immutable)(nil))
	_ = (fs.NodeCreater)((*immutable)(nil))
	_ = (fs.NodeTmpfiler)((*immutable)(nil))
	_ = (fs.NodeMkdirer)((*immutable)(nil))
	_ = (fs.NodeMknoder)((*immutable)(nil))
	_ = (fs.NodeLinker)((*immutable)(nil))
	_ = (fs.NodeSymlinker)((*immutable)(nil))
	_ = (fs.NodeSetattrer)((*immutable)(nil))
	_ = (fs.NodeSetxattrer)((*immutable)(nil))
	_ = (fs.NodeRemovexattrer)((*immutable)(nil))
)

// Unlink refuses to delete a node.
func (immutable) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

// Rmdir refuses to remove a directory.
func (immutable) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

// Rename refuses to move or exchange a node.
func (immutable) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EPERM
}

// Create refuses to create a file.
func (immutable) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EPERM
}

// Tmpfile refuses O_TMPFILE.
func (immutable) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EPERM
}

// Mkdir refuses to create a directory.
func (immutable) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

// Mknod refuses to create a special file.
func (immutable) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

// Link refuses to create a hard link.
func (immutable) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

// Symlink refuses to create a symbolic link.
func (immutable) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

// Setattr refuses chmod, chown, truncate and utimes.
func (immutable) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EPERM
}

// Setxattr refuses to set an extended attribute.
func (immutable) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.EPERM
}

// Removexattr refuses to remove an extended attribute.
func (immutable) Removexattr(ctx context.Context, attr string) syscall.Errno { return syscall.EPERM }
