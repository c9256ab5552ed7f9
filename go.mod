module guestlist.dev/guestlist

go 1.26.8

replace (
	guestlist.dev/edge => ./edge
	guestlist.dev/projections => ./projections
	guestlist.dev/proto => ./proto
	guestlist.dev/services => ./services
)
