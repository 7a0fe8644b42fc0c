module github.com/tsn-dra-driver/tsn-dra-driver

go 1.25.0
