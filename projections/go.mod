module guestlist.dev/projections

go 1.26.8

replace (
	guestlist.dev/edge => ../edge
	guestlist.dev/proto => ../proto
)
