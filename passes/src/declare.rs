//! Declaring a pass once: [`pass_options!`](crate::pass_options) turns one declaration per
//! option (field, type, name, default, doc) into the options struct, its `Default`, its parsing
//! from [`PassOptions`](crate::options::PassOptions) and back, and the
//! [`OptionSpec`](crate::options::OptionSpec)s that the pipeline parser and `--list-passes`
//! read; [`declare_pass!`](crate::declare_pass) turns a name, a summary, the options struct and
//! a run function into the pass's [`PassInfo`](crate::pass::PassInfo) and its `Pass` value.
//!
//! ```text
//! pass_options! {
//!     /// Options of [`rotate_residual`].
//!     #[derive(Debug, Clone, Copy, PartialEq, Eq)]
//!     pub struct RotateResidualOptions {
//!         pub kind: RotationKind = {
//!             name: "kind",
//!             default: RotationKind::Haar,
//!             doc: "The transform: …",
//!         },
//!         pub seed: u64 = { name: "seed", default: 0, doc: "Seed of the random construction." },
//!     }
//! }
//! declare_pass! {
//!     name: "rotate-residual",
//!     summary: "Applies one orthogonal change of basis …",
//!     options: RotateResidualOptions,
//!     run: run_pass,
//! }
//! ```
//! An option's pipeline type is its Rust type's [`OptionType::KIND`](crate::options::OptionType)
//! unless the declaration adds `kind: …` (integer bounds, the order of enum words). An option
//! several passes share is an [`OptionDecl`](crate::options::OptionDecl) constant written in
//! place of the braces (`pub sparsity: f64 = SPARSITY,`). `check: path;` after the struct names
//! a `fn(&Self) -> Result<(), OptionError>` that refuses combinations single values cannot.

/// Declares a pass's options struct and everything derived from it (see the module doc of
/// `declare`).
#[macro_export]
macro_rules! pass_options {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $fvis:vis $field:ident : $ty:ty = $decl:tt
            ),* $(,)?
        }
        $(check: $check:path;)?
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty,)*
        }

        impl $name {
            /// The option specs, in declaration order.
            pub const SPECS: &'static [$crate::options::OptionSpec] = &[
                $($crate::pass_options!(@spec $ty, $decl)),*
            ];

            /// Reads every option (a complete [`PassOptions`]($crate::options::PassOptions),
            /// as the pipeline parser makes them).
            pub fn from_options(
                o: &$crate::options::PassOptions,
            ) -> Result<Self, $crate::options::OptionError> {
                let v = $name {
                    $($field: o.typed::<$ty>($crate::pass_options!(@decl $ty, $decl).name)?,)*
                };
                $($check(&v)?;)?
                Ok(v)
            }

            /// The options as pipeline values; an error names a value outside its option's
            /// declared range.
            pub fn to_options(
                &self,
            ) -> Result<$crate::options::PassOptions, $crate::options::OptionError> {
                $crate::options::PassOptions::from_values(
                    Self::SPECS,
                    vec![$($crate::options::OptionType::to_value(&self.$field)),*],
                )
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($field: ($crate::pass_options!(@decl $ty, $decl).default)(),)*
                }
            }
        }
    };

    (@decl $ty:ty, {
        name: $n:expr,
        default: $d:expr,
        doc: $doc:expr
        $(, kind: $k:expr)? $(,)?
    }) => {
        $crate::options::OptionDecl::<$ty> {
            name: $n,
            kind: $crate::pass_options!(@kind $ty $(, $k)?),
            default: || $d,
            doc: $doc,
        }
    };
    (@decl $ty:ty, $shared:ident) => {
        $shared
    };

    (@kind $ty:ty) => { <$ty as $crate::options::OptionType>::KIND };
    (@kind $ty:ty, $k:expr) => { $k };

    (@spec $ty:ty, $decl:tt) => {{
        const D: $crate::options::OptionDecl<$ty> = $crate::pass_options!(@decl $ty, $decl);
        $crate::options::OptionSpec {
            name: D.name,
            kind: D.kind,
            default: || $crate::options::OptionType::to_value(&(D.default)()),
            doc: D.doc,
        }
    }};
}

/// Declares a pass: its `INFO` (name, summary, option specs, constructor) and the `Pass` value
/// that holds the parsed options and calls `run` (see the module doc of `declare`).
///
/// `run` is `fn(&mut Module, &Options, &mut PassContext) -> Result<PassResult, PassError>`, or
/// without the options argument for a pass declared without `options`.
#[macro_export]
macro_rules! declare_pass {
    (
        name: $pname:literal,
        summary: $summary:expr,
        options: $opts:ty,
        run: $run:path $(,)?
    ) => {
        /// The registry entry of this pass.
        pub const INFO: $crate::pass::PassInfo = $crate::pass::PassInfo {
            name: $pname,
            summary: $summary,
            options: <$opts>::SPECS,
            build: build_pass,
        };

        struct PassImpl {
            opts: $opts,
        }

        fn build_pass(
            o: &$crate::options::PassOptions,
        ) -> Result<Box<dyn $crate::pass::Pass>, $crate::options::OptionError> {
            Ok(Box::new(PassImpl {
                opts: <$opts>::from_options(o)?,
            }))
        }

        $crate::declare_pass!(@impl |this, m, cx| $run(m, &this.opts, cx));
    };
    (
        name: $pname:literal,
        summary: $summary:expr,
        run: $run:path $(,)?
    ) => {
        /// The registry entry of this pass.
        pub const INFO: $crate::pass::PassInfo = $crate::pass::PassInfo {
            name: $pname,
            summary: $summary,
            options: &[],
            build: build_pass,
        };

        struct PassImpl;

        fn build_pass(
            _: &$crate::options::PassOptions,
        ) -> Result<Box<dyn $crate::pass::Pass>, $crate::options::OptionError> {
            Ok(Box::new(PassImpl))
        }

        $crate::declare_pass!(@impl |_this, m, cx| $run(m, cx));
    };
    // The `Pass` impl both forms share: the name from `INFO`, `run` through the given call.
    (@impl |$this:ident, $m:ident, $cx:ident| $call:expr) => {
        impl $crate::pass::Pass for PassImpl {
            fn name(&self) -> &'static str {
                INFO.name
            }

            fn run(
                &self,
                $m: &mut $crate::__private::Module,
                $cx: &mut $crate::pass::PassContext,
            ) -> Result<$crate::pass::PassResult, $crate::pass::PassError> {
                let $this = self;
                $call
            }
        }
    };
}
