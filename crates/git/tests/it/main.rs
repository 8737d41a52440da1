//! Integration tests of gantry-git on real repositories in temp dirs.

mod merge;
