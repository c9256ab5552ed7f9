package fold

import "time"

// journal records how to undo changes to a Tenant since Begin.
type journal struct {
	header header
	saved  bool
	undo   []func()
}

type header struct {
	displayName string
	createTime  time.Time
	exists      bool
	revision    uint64
	position    uint64
	time        time.Time
}

// Begin starts recording changes so that Rollback can undo them. The control plane uses it to
// decide a batch of commands on provisional state and to return to the stored state afterwards.
// Begin while recording discards the earlier record.
func (t *Tenant) Begin() { t.journal = &journal{} }

// Rollback undoes every change since Begin and stops recording.
func (t *Tenant) Rollback() {
	j := t.journal
	if j == nil {
		return
	}
	t.journal = nil
	for i := len(j.undo) - 1; i >= 0; i-- {
		j.undo[i]()
	}
	if j.saved {
		h := j.header
		t.DisplayName, t.CreateTime, t.Exists, t.Revision, t.Position, t.Time = h.displayName, h.createTime, h.exists, h.revision, h.position, h.time
	}
}

// Commit keeps the changes since Begin and stops recording.
func (t *Tenant) Commit() { t.journal = nil }

func (t *Tenant) saveHeader() {
	if j := t.journal; j != nil && !j.saved {
		j.saved = true
		j.header = header{t.DisplayName, t.CreateTime, t.Exists, t.Revision, t.Position, t.Time}
	}
}
