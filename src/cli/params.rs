//! The generation-parameter flags of `hearth run` (`--temperature`, `-n`, `--stop`, ...), made
//! from the library's parameter table (`hearth::options::PARAMETERS`) rather than listed here:
//! a row with a `Flag` becomes a flag with its help text, and the values come back as
//! `(name, value)` pairs that `GenerateOptions::set` checks.

use clap::{Arg, ArgAction, ArgMatches, Command};

use hearth::options::{Flag, PARAMETERS};

/// The parameter flags given, as `(parameter name, value)` pairs in table order (a repeated
/// flag in command-line order).
pub struct ParameterFlags(pub Vec<(String, String)>);

impl clap::FromArgMatches for ParameterFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut pairs = Vec::new();
        for p in PARAMETERS.iter().filter(|p| p.flag != Flag::None) {
            for value in matches.get_many::<String>(p.name).into_iter().flatten() {
                pairs.push((p.name.to_string(), value.clone()));
            }
        }
        Ok(ParameterFlags(pairs))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for ParameterFlags {
    fn augment_args(mut cmd: Command) -> Command {
        for p in PARAMETERS {
            let mut arg = Arg::new(p.name)
                .long(p.flag_name())
                .help(p.help)
                .value_name(p.value_name)
                // `-n -1` and `--seed -1` are values, not flags; the table checks them.
                .allow_negative_numbers(true)
                .action(if p.repeated {
                    ArgAction::Append
                } else {
                    ArgAction::Set
                });
            match p.flag {
                Flag::None => continue,
                Flag::Long => {}
                Flag::Short(c) => arg = arg.short(c),
            }
            cmd = cmd.arg(arg);
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}
