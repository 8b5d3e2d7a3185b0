//! Host side: `vport-bootargs send`, in place of CloudStack's
//! patchviasocket.py.

use crate::cli::SendArgs;
use crate::error::{Error, Result};

pub fn run(_args: &SendArgs) -> Result<i32> {
    Err(Error::Unavailable("send is not implemented yet".into()))
}
